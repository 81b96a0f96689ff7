"""``attribute()``: inputs in, ``Attribution`` results out, for every registered method.

Shared by all methods: validation with one-line errors, tokenisation (prompt with the
tokenizer's special tokens, target and foil without), greedy generation when no target is given,
the target function, provenance, and the eval-mode guard (the user's model is left as it was).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import transformers

from .._version import __version__
from ..errors import InputError, NumericalError
from ..model import Model
from ..result import Attribution
from ..targets import resolve_target_fn, target_fn_name
from ._engine import ScoreRow, score_sequences
from .base import Context, MethodSpec, Request, eval_mode, get_method
from .verify import count_forwards, verify_kwargs
from .verify import verify as verify_attribution

__all__ = ["attribute", "build_requests", "versions", "eval_mode"]

DEFAULT_NEW_TOKENS = 5


def versions() -> dict[str, str]:
    return {
        "lmxray": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _as_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InputError(f"{name} must be a string or a list of strings, got {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        bad = next((v for v in value if not isinstance(v, str)), None)
        return f"a list holding {type(bad).__name__} {bad!r}"[:120]
    return f"{type(value).__name__} {value!r}"[:120]


def check_new_tokens(n_new: Any) -> int:
    """``max_new_tokens`` as a positive int, or an :class:`InputError`."""
    if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {n_new!r}")
    return n_new


def build_requests(
    model: Model,
    prompts: list[str],
    targets: list[str] | None,
    foils: list[str] | None,
    max_new_tokens: int | None,
) -> list[Request]:
    requests = []
    for i, prompt in enumerate(prompts):
        where = f" (item {i})" if len(prompts) > 1 else ""
        if not prompt or not prompt.strip():
            raise InputError(f"the prompt is empty{where}; give some text to explain")
        p_ids = model.encode(prompt)
        specials = set(model.tokenizer.all_special_ids or [])
        if not [t for t in p_ids if t not in specials]:
            raise InputError(f"the prompt{where} tokenizes to no tokens; give some text to explain")
        if targets is not None:
            if not targets[i]:
                raise InputError(f"the target is empty{where}; give target text or use max_new_tokens")
            t_ids = model.encode_target(targets[i])
            if not t_ids:
                raise InputError(f"the target{where} tokenizes to no tokens")
            model.check_length(len(p_ids) + len(t_ids))
        else:
            n_new = check_new_tokens(DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens)
            t_ids = model.generate_ids(p_ids, n_new)
            if not t_ids:
                raise InputError(
                    f"the model ended the text at once (EOS) for the prompt{where}; "
                    "pass target= to explain a given continuation"
                )
        f_ids = None
        if foils is not None:
            if not foils[i]:
                raise InputError(f"the foil is empty{where}; give a foil of the target's token length")
            f_ids = model.encode_target(foils[i])
            if len(f_ids) != len(t_ids):
                raise InputError(
                    f"the foil{where} has {len(f_ids)} tokens but the target has {len(t_ids)}; "
                    "contrastive attribution compares target and foil token by token, so give "
                    "a foil of the same token length"
                )
        requests.append(Request(p_ids, t_ids, f_ids))
    return requests


def attribute(
    model: Model, prompt: str | Sequence[str], target: str | Sequence[str] | None = None, *,
    method: str = "integrated_gradients", max_new_tokens: int | None = None,
    foil: str | Sequence[str] | None = None, target_fn: Any = None,
    internal_batch_size: int | None = None, memory_budget: int | None = None,
    verify: bool | dict[str, Any] = False, **params: Any,
) -> Attribution | list[Attribution]:
    """Attribute each target token of each prompt to the source tokens before it.

    Args:
        prompt: a string, or a list of strings (then a list of results comes back).
        target: the continuation to explain (same shape as ``prompt``); ``None`` generates
            ``max_new_tokens`` tokens greedily (default 5) and explains them.
        method: a registered method name (see :func:`lmxray.methods`).
        foil: contrastive alternative to ``target``, same token length: explains
            ``f(target) - f(foil)`` at each step.
        target_fn: ``"logprob"`` (default), ``"prob"``, ``"logit"`` or a callable
            ``fn(logits[..., V], ids[...]) -> [...]``.
        internal_batch_size: sequences per forward pass (default: from ``memory_budget``).
        memory_budget: bytes of activations per chunk (default: from free device memory).
        verify: also check each explanation (:func:`lmxray.attribution.verify.verify`): True,
            or a dict of its parameters (``{"k": 99, "model_null": True}``); the result's
            ``verification`` holds the verdict and ``verification.cost`` the extra passes.
        **params: method parameters (e.g. ``n_steps``, ``baseline`` for integrated gradients).

    Returns:
        One :class:`~lmxray.result.Attribution` per prompt.
    """
    spec = get_method(method)
    resolved = spec.resolve_params(params)
    prompts, targets, foils = _check_texts(prompt, target, foil, max_new_tokens)
    verify_kw = _check_verify(verify, foils)
    fn = resolve_target_fn(target_fn)
    ctx = Context(target_fn=fn, internal_batch_size=internal_batch_size, memory_budget=memory_budget)

    hf = [model.hf] if isinstance(model, Model) else []  # a black-box scorer has no modules
    with eval_mode(model), count_forwards(hf) as cost:
        requests = build_requests(model, prompts, targets, foils, max_new_tokens)
        outputs = spec.fn(model, requests, ctx, **resolved)
        missing = [i for i, o in enumerate(outputs) if o.target_scores is None]
        if missing:
            vals = score_sequences(
                model,
                [ScoreRow(requests[i].input_ids, requests[i].target_ids, requests[i].foil_ids) for i in missing],
                ctx,
            )
            for i, v in zip(missing, vals, strict=True):
                outputs[i].target_scores = v

    base_info: dict[str, Any] = {
        "method_params": _describe(resolved),
        "target_fn": target_fn_name(target_fn),
        "generated": targets is None,
        "versions": versions(),
        "passes": spec.passes,
    }
    base_info.update(ctx.info)  # e.g. oom_backoff
    n_new = None if targets is not None else DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    results = [
        _result(model, spec, req, out, base_info, None if foils is None else foils[i], n_new)
        for i, (req, out) in enumerate(zip(requests, outputs, strict=True))
    ]
    if verify_kw is not None:
        share = {"forward_passes": cost.forward_passes / len(results),
                 "forward_tokens": cost.forward_tokens / len(results)}
        for r in results:
            r.verification = verify_attribution(
                model, r, internal_batch_size=internal_batch_size, memory_budget=memory_budget,
                explanation_cost=share, **verify_kw)
    return results if not isinstance(prompt, str) else results[0]


def _check_verify(verify: Any, foils: list[str] | None) -> dict[str, Any] | None:
    """``verify=`` as the verification's keyword arguments (None: no verification)."""
    kw = verify_kwargs(verify)
    if kw is not None and foils is not None:
        raise InputError("contrastive (foil) attributions cannot be verified; drop foil= or verify=")
    return kw


def _check_texts(
    prompt: Any, target: Any, foil: Any, max_new_tokens: Any
) -> tuple[list[str], list[str] | None, list[str] | None]:
    """Prompts, targets and foils as lists of one length, or a one-line :class:`InputError`."""
    prompts = _as_list(prompt, "prompt")
    if prompts is None:
        raise InputError("prompt must be a string or a list of strings, got None")
    if not isinstance(prompt, str) and not prompts:
        raise InputError("the prompt list is empty")
    targets = _as_list(target, "target")
    foils = _as_list(foil, "foil")
    if targets is not None and max_new_tokens is not None:
        raise InputError("give either target= or max_new_tokens=, not both")
    if max_new_tokens is not None:
        check_new_tokens(max_new_tokens)
    for name, seq in (("target", targets), ("foil", foils)):
        if seq is not None and len(seq) != len(prompts):
            raise InputError(f"got {len(prompts)} prompts but {len(seq)} {name}s; give one per prompt")
    if foils is not None and targets is None:
        raise InputError("a foil needs an explicit target= to contrast with")
    return prompts, targets, foils


def _result(
    model: Model, spec: MethodSpec, req: Request, out: Any, base_info: dict[str, Any],
    foil: str | None, n_new: int | None,
) -> Attribution:
    """The :class:`Attribution` of one request (scores checked for non-finite values)."""
    valid = ~np.isnan(out.scores)
    defined = _defined_mask(req)
    if np.isinf(out.scores).any() or (defined & ~valid).sum() > _allowed_undefined(out):
        raise NumericalError(
            f"method {spec.name!r} produced non-finite scores; check the model's dtype "
            "(try float32) and the method parameters"
        )
    info = dict(base_info)
    info.update(out.info)
    if n_new is not None:  # generated: say when the model ended the text before n_new tokens
        info["requested_new_tokens"] = n_new
        info["stopped_at_eos"] = req.n_target < n_new
    if foil is not None:
        info["foil"] = foil
        info["foil_tokens"] = model.token_strings(req.foil_ids or [])
    return Attribution(
        source_tokens=model.token_strings(req.source_ids),
        target_tokens=model.token_strings(req.target_ids),
        scores=out.scores,
        target_scores=np.asarray(out.target_scores, dtype=np.float32),
        method=spec.name,
        model_name=model.name,
        info=info,
        source_ids=req.source_ids,
        target_ids=req.target_ids,
    )


def _defined_mask(req: Request) -> np.ndarray:
    t = np.arange(req.n_target)[:, None]
    s = np.arange(req.n_source)[None, :]
    return s < req.n_prompt + t


def _allowed_undefined(out: Any) -> int:
    """Cells a method may leave undefined on purpose (e.g. occluding a step's whole prefix)."""
    return int(out.info.get("undefined_cells", 0)) if isinstance(out.info, dict) else 0


def _describe(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, np.ndarray):
            out[k] = f"array{list(v.shape)}"
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            out[k] = f"tensor{list(v.shape)}"
        else:
            out[k] = v
    return out
