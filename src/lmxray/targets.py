"""Target functions: what quantity of the model's output an attribution explains.

A target function maps the logits of one or more target steps and the target token ids to one
number per step. It works on any leading shape::

    fn(logits: Tensor[..., vocab], token_ids: LongTensor[...]) -> Tensor[...]

Built-ins: ``logprob`` (default; log-probability of the target token), ``prob`` and ``logit``.
A contrastive target (``foil=``) explains ``fn(target) - fn(foil)`` at every step (Yin & Neubig
2022, "Interpreting Language Models with Contrastive Explanations"). Any callable with the
signature above can be passed as ``target_fn=``; it must be differentiable for gradient methods.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError

__all__ = ["TargetFn", "TARGET_FUNCTIONS", "resolve_target_fn", "evaluate_target", "target_fn_name"]

TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logprob(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``token_ids`` under ``softmax(logits)``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return lp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def prob(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Probability of ``token_ids`` under ``softmax(logits)``."""
    return logprob(logits, token_ids).exp()


def logit(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Raw logit of ``token_ids``."""
    return logits.float().gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


TARGET_FUNCTIONS: dict[str, TargetFn] = {"logprob": logprob, "prob": prob, "logit": logit}


def resolve_target_fn(spec: str | TargetFn | None) -> TargetFn:
    """Return the callable for a target-function name or callable (``None`` means logprob)."""
    if spec is None:
        return logprob
    if isinstance(spec, str):
        try:
            return TARGET_FUNCTIONS[spec]
        except KeyError:
            raise InputError(
                f"unknown target function {spec!r}; use one of {', '.join(TARGET_FUNCTIONS)} "
                "or pass a callable fn(logits, token_ids)"
            ) from None
    if callable(spec):
        return spec
    raise InputError(f"target_fn must be a name or a callable, got {type(spec).__name__}")


def target_fn_name(spec: str | TargetFn | None) -> str:
    if spec is None:
        return "logprob"
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__qualname__", None) or getattr(spec, "__name__", None) or repr(spec)


def evaluate_target(
    fn: TargetFn,
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    foil_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(logits, target) - fn(logits, foil)`` if a foil is given, else ``fn(logits, target)``."""
    value = fn(logits, token_ids)
    if foil_ids is not None:
        value = value - fn(logits, foil_ids)
    return value
