"""Gradient-family attribution: saliency, input x gradient, integrated gradients.

All three differentiate the target function of every step with respect to the input embeddings
of every source position, from one teacher-forced forward per batch of path points
(:func:`~lmxray.attribution._engine.gradient_sweep`). Per-dimension attributions are reduced over
the embedding dimension by a signed sum (``reduce="sum"``, default; IG completeness holds for it),
``"l2"`` (norm) or ``"abs_sum"``.

- Saliency (Simonyan et al. 2014): ``|d f_t / d e_s|``.
- Input x gradient (Shrikumar et al. 2016): ``e_s * d f_t / d e_s``.
- Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365):
  ``(e_s - b_s) * int_0^1 d f_t(b + a (e - b)) / d e_s da``, by Gauss-Legendre (default) or
  trapezoid quadrature. Every source position of a step (prompt and earlier targets) moves between
  baseline and input (``interpolate="all"``); ``interpolate="prompt"`` keeps earlier target
  tokens fixed (Captum's LLM wrapper convention). Completeness,
  ``sum_s IG[t, s] = f_t(x) - f_t(b)``, is checked per step and recorded in ``info``.

Passes: saliency and input x gradient make 1 forward + T backward (vector-Jacobian products) for a
prompt with T target steps; IG makes ceil(n_steps / chunk) forwards + T backwards per chunk, plus
one no-grad forward of input and baseline for the convergence check.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..model import Model
from ._engine import gradient_sweep, path_values, quadrature
from .base import Context, MethodFn, MethodOutput, Request, nan_mask_scores, register_method

__all__ = ["resolve_baseline_ids", "baseline_embeddings", "ConvergenceWarning", "reduce_dims"]

REDUCTIONS = ("sum", "l2", "abs_sum")


class ConvergenceWarning(UserWarning):
    """Integrated gradients' completeness error exceeded 1% of f(x) - f(baseline)."""


def reduce_dims(attr: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce the last (embedding) dimension."""
    if reduce == "sum":
        return attr.sum(-1)
    if reduce == "l2":
        return attr.norm(dim=-1)
    if reduce == "abs_sum":
        return attr.abs().sum(-1)
    raise InputError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)}")


def _token_id_baseline(model: Model, which: str) -> int | None:
    tok = model.tokenizer
    return {"pad": tok.pad_token_id, "unk": tok.unk_token_id, "eos": tok.eos_token_id,
            "bos": tok.bos_token_id}.get(which)


def resolve_baseline_ids(model: Model, baseline: Any) -> tuple[int | None, str]:
    """A token id for a token-valued baseline (``None`` for ``"zero"``) and its description.

    ``"auto"`` takes the first of unk, pad, eos whose embedding row is not near zero (many
    RMSNorm models have an all-zero pad row: a zero-norm baseline makes the IG integrand spike
    near alpha=0), else the zero vector.
    """
    if isinstance(baseline, bool):
        raise InputError("baseline must be 'auto', 'zero', 'pad', 'unk', 'eos', a token id or an array")
    if isinstance(baseline, int | np.integer):
        given = int(baseline)
        if not 0 <= given < model.vocab_size:
            raise InputError(f"baseline token id {given} is outside the vocabulary (0..{model.vocab_size - 1})")
        return given, f"token:{given} {model.token_strings([given])[0]!r}"
    if baseline == "zero":
        return None, "zero"
    if baseline in ("pad", "unk", "eos", "bos"):
        bid = _token_id_baseline(model, baseline)
        if bid is None:
            raise InputError(f"the tokenizer has no {baseline} token; pass baseline='zero' or a token id")
        return int(bid), f"{baseline} (token:{bid} {model.token_strings([bid])[0]!r})"
    if baseline == "auto":
        weight = model.embedding_matrix.detach()
        norms = weight.float().norm(dim=-1)
        floor = 0.1 * float(norms.median())
        for which in ("unk", "pad", "eos"):
            bid = _token_id_baseline(model, which)
            if bid is not None and float(norms[bid]) > floor:
                return int(bid), f"{which} (token:{bid} {model.token_strings([bid])[0]!r})"
        return None, "zero"
    raise InputError(
        f"unknown baseline {baseline!r}; use 'auto', 'zero', 'pad', 'unk', 'eos', a token id, "
        "or an array [n_sources, d_model]"
    )


def baseline_embeddings(
    model: Model, req: Request, x: torch.Tensor, baseline: Any
) -> tuple[torch.Tensor, str]:
    """Baseline embeddings ``[L, d]`` (float32) for the input embeddings ``x`` of one request."""
    L, d = x.shape
    if isinstance(baseline, np.ndarray | torch.Tensor | list):
        b = torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=x.device)
        if b.ndim == 1 and b.shape[0] == d:
            return b.expand(L, d).clone(), "array[d]"
        if b.ndim == 2 and b.shape[1] == d and b.shape[0] in (L, L + 1):
            return b[:L].clone(), f"array[{b.shape[0]},{d}]"
        raise InputError(
            f"baseline array has shape {tuple(b.shape)}; expected [{L + 1}, {d}] (one row per "
            f"source token), [{L}, {d}] or [{d}]"
        )
    bid, desc = resolve_baseline_ids(model, baseline)
    if bid is None:
        return torch.zeros_like(x), desc
    row = model.embed(torch.tensor([bid], device=model.device))[0].detach().float()
    return row.expand(L, d).clone(), desc


def _input_embeddings(model: Model, req: Request) -> torch.Tensor:
    ids = torch.tensor(req.input_ids, device=model.device)
    with torch.no_grad():
        return model.embed(ids).detach().float()


def _finish(
    req: Request, per_dim: torch.Tensor, reduce: str
) -> np.ndarray:
    """Reduce ``[T, L, d]`` to a NaN-masked ``[T, S]`` score matrix."""
    red = reduce_dims(per_dim, reduce).cpu().numpy()
    scores = np.full((req.n_target, req.n_source), np.nan, dtype=np.float32)
    scores[:, : red.shape[1]] = red
    return nan_mask_scores(scores, req.n_prompt)


def _single_point(
    model: Model, requests: list[Request], ctx: Context, reduce: str, times_input: bool
) -> list[MethodOutput]:
    """Saliency (``|grad|``) or input x gradient (``e * grad``) from one gradient per step."""
    reduce_dims(torch.zeros(1, 1), reduce)
    xs = [_input_embeddings(model, r) for r in requests]
    zeros = [torch.zeros_like(x) for x in xs]
    G, F = gradient_sweep(model, requests, zeros, xs, torch.ones(1), torch.ones(1), ctx)
    return [
        MethodOutput(
            _finish(r, g * x.unsqueeze(0) if times_input else g.abs(), reduce), f[0],
            {"reduce": reduce},
        )
        for r, x, g, f in zip(requests, xs, G, F, strict=True)
    ]


def _single_point_method(name: str, description: str, times_input: bool) -> MethodFn:
    """Register the one-gradient method ``name`` (saliency or input x gradient)."""

    def method(
        model: Model, requests: list[Request], ctx: Context, *, reduce: str = "sum"
    ) -> list[MethodOutput]:
        return _single_point(model, requests, ctx, reduce, times_input=times_input)

    method.__name__ = method.__qualname__ = name
    return register_method(
        name, description=description, kind="gradient",
        passes="1 forward + T vector-Jacobian products per prompt",
    )(method)


saliency = _single_point_method(
    "saliency",
    "Gradient magnitude |d f / d embedding| per source token (Simonyan et al. 2014).",
    times_input=False,
)
input_x_gradient = _single_point_method(
    "input_x_gradient", "Embedding times gradient, signed (Shrikumar et al. 2016).",
    times_input=True,
)


@register_method(
    "integrated_gradients",
    description="Integrated gradients from a baseline, completeness-checked per step (Sundararajan et al. 2017).",
    kind="gradient",
    passes="ceil(n_steps/chunk) forwards + T vector-Jacobian products per chunk, + 1 no-grad forward",
)
def integrated_gradients(
    model: Model,
    requests: list[Request],
    ctx: Context,
    *,
    n_steps: int = 128,
    baseline: Any = "auto",
    integration: str = "gausslegendre",
    interpolate: str = "all",
    reduce: str = "sum",
    warn_delta: float = 0.01,
) -> list[MethodOutput]:
    reduce_dims(torch.zeros(1, 1), reduce)
    if interpolate not in ("all", "prompt"):
        raise InputError(f"interpolate must be 'all' or 'prompt', got {interpolate!r}")
    if not isinstance(n_steps, int | np.integer) or isinstance(n_steps, bool):
        raise InputError(f"n_steps must be an integer, got {n_steps!r}")
    alphas_np, weights_np = quadrature(integration, int(n_steps))
    xs, bases, descs = [], [], []
    for r in requests:
        x = _input_embeddings(model, r)
        b, desc = baseline_embeddings(model, r, x, baseline)
        if interpolate == "prompt":
            b[r.n_prompt:] = x[r.n_prompt:]
        xs.append(x)
        bases.append(b)
        descs.append(desc)
    diffs = [x - b for x, b in zip(xs, bases, strict=True)]
    alphas = torch.tensor(alphas_np, dtype=torch.float32, device=model.device)
    weights = torch.tensor(weights_np, dtype=torch.float32, device=model.device)
    G, _ = gradient_sweep(model, requests, bases, diffs, alphas, weights, ctx)
    # f at the input and at the baseline, for the completeness check (one no-grad forward)
    ends = path_values(model, requests, bases, diffs, torch.tensor([1.0, 0.0]), ctx)
    outputs = []
    for r, g, diff, (fx, fb), desc in zip(requests, G, diffs, ends, descs, strict=True):
        per_dim = g * diff.unsqueeze(0)
        total = per_dim.sum(dim=(1, 2)).cpu().numpy()
        expected = fx - fb
        delta = total - expected
        rel = np.abs(delta) / np.maximum(np.abs(expected), 1e-12)
        bad = (np.abs(delta) > warn_delta * np.abs(expected)) & (np.abs(delta) > 1e-4)
        if bad.any():
            warnings.warn(
                f"integrated gradients did not converge: completeness error up to "
                f"{float(np.max(np.abs(delta))):.3g} ({float(np.max(rel[bad])):.1%} of "
                f"|f(x)-f(baseline)|) with {n_steps} steps; raise n_steps",
                ConvergenceWarning,
                stacklevel=4,
            )
        info = {
            "n_steps": int(n_steps),
            "integration": integration,
            "interpolate": interpolate,
            "baseline": desc,
            "reduce": reduce,
            "baseline_scores": fb.tolist(),
            "convergence_delta": delta.tolist(),
            "convergence_delta_relative": rel.tolist(),
        }
        outputs.append(MethodOutput(_finish(r, per_dim, reduce), fx, info))
    return outputs
