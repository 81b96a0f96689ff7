"""Attention-based attribution: raw attention of one layer, and attention rollout.

- ``attention``: the attention weight from the query position that predicts step ``t``
  (position ``n_prompt + t - 1``) to each source token, averaged over heads (or chosen heads) of
  one layer (default: the last).
- ``attention_rollout`` (Abnar & Zuidema 2020, arXiv:2005.00928): per layer
  ``A' = 0.5 * mean_heads(A) + 0.5 * I``, rows renormalised, multiplied through the layers.

Attention is not by itself an explanation (Jain & Wallace 2019); judge these with the
faithfulness metrics. The scores do not depend on the target function or foil, which only set
``target_scores``. Passes: 1 forward per batch of prompts, with the eager attention
implementation (weights materialised).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MethodError
from ..model import Model
from ..targets import evaluate_target
from ._budget import ScoreRow, target_tensors
from .base import Context, MethodOutput, Request, nan_mask_scores, register_method


def _attentions(
    model: Model, requests: list[Request], ctx: Context
) -> tuple[list[list[torch.Tensor]], list[np.ndarray]]:
    """Per request, per layer ``[H, L, L]`` attention weights, and the target values."""
    ids, mask, pos = model.pad_batch([r.input_ids for r in requests])
    t_max = max(r.n_target for r in requests)
    with torch.no_grad(), model.eager_attention():
        out = model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max,
            output_attentions=True,
        )
    atts = out.attentions
    if not atts or any(a is None for a in atts):
        raise MethodError(
            f"{type(model.hf).__name__} did not return attention weights; attention methods "
            "need a model that supports output_attentions with eager attention"
        )
    L = ids.shape[1]
    rows = [ScoreRow([], r.target_ids, r.foil_ids) for r in requests]
    tgt, foil, _ = target_tensors(rows, t_max, out.logits.device)
    values = evaluate_target(ctx.target_fn, out.logits, tgt, foil).float().cpu().numpy()
    per_req, fx = [], []
    for b, r in enumerate(requests):
        li = len(r.input_ids)
        per_req.append([a[b, :, L - li:, L - li:].float() for a in atts])
        fx.append(values[b, t_max - r.n_target:])
    return per_req, fx


def _select_heads(att: torch.Tensor, heads: Any) -> torch.Tensor:
    if heads is None or heads == "mean":
        return att.mean(0)
    try:
        idx = [int(h) for h in heads]
    except TypeError:
        idx = [int(heads)]
    if not idx or min(idx) < -att.shape[0] or max(idx) >= att.shape[0]:
        raise InputError(f"heads must be indices in 0..{att.shape[0] - 1}, got {heads!r}")
    return att[idx].mean(0)


def _scores_from_matrix(r: Request, mat: torch.Tensor) -> np.ndarray:
    """Rows of ``mat [L, L]`` at the query positions that predict each target step."""
    q = [r.n_prompt + t - 1 for t in range(r.n_target)]
    scores = np.full((r.n_target, r.n_source), np.nan, np.float32)
    scores[:, : mat.shape[1]] = mat[q].cpu().numpy()
    return nan_mask_scores(scores, r.n_prompt)


# Both methods read eager attention weights from one forward pass per batch.
_attention_method = functools.partial(
    register_method, kind="attention", passes="1 forward per batch (eager attention)"
)


def _from_matrices(
    model: Model, requests: list[Request], ctx: Context,
    matrix: Callable[[Sequence[torch.Tensor]], torch.Tensor], info: dict[str, Any],
) -> list[MethodOutput]:
    """One output per request: the scores of ``matrix(per-layer attentions [H, L, L])``."""
    per_req, fx = _attentions(model, requests, ctx)
    return [MethodOutput(_scores_from_matrix(r, matrix(atts)), f, dict(info))
            for r, atts, f in zip(requests, per_req, fx, strict=True)]


@_attention_method(
    "attention",
    description="Attention weights of one layer (head mean) from each step's query position.",
)
def attention(
    model: Model, requests: list[Request], ctx: Context, *, layer: int = -1, heads: Any = "mean"
) -> list[MethodOutput]:
    n = model.n_layers
    if not isinstance(layer, int | np.integer) or not -n <= int(layer) < n:
        raise InputError(f"layer must be an integer in {-n}..{n - 1}, got {layer!r}")
    return _from_matrices(model, requests, ctx, lambda atts: _select_heads(atts[int(layer)], heads),
                          {"layer": int(layer) % n, "heads": heads})


@_attention_method(
    "attention_rollout",
    description="Attention rollout through all layers with residual identity (Abnar & Zuidema 2020).",
)
def attention_rollout(
    model: Model, requests: list[Request], ctx: Context, *, residual: float = 0.5
) -> list[MethodOutput]:
    if not 0.0 <= float(residual) < 1.0:
        raise InputError(f"residual must be in [0, 1), got {residual!r}")
    return _from_matrices(model, requests, ctx, lambda atts: _rollout(atts, residual),
                          {"residual": float(residual)})


def _rollout(atts: Sequence[torch.Tensor], residual: float) -> torch.Tensor:
    """``[L, L]`` product of the layers' head-mean attentions mixed with the identity."""
    eye = torch.eye(atts[0].shape[-1], device=atts[0].device)
    roll = eye
    for a in atts:
        a_hat = (1 - residual) * a.mean(0) + residual * eye
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        roll = a_hat @ roll
    return roll
