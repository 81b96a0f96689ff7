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


@register_method(
    "attention",
    description="Attention weights of one layer (head mean) from each step's query position.",
    kind="attention",
    passes="1 forward per batch (eager attention)",
)
def attention(
    model: Model, requests: list[Request], ctx: Context, *, layer: int = -1, heads: Any = "mean"
) -> list[MethodOutput]:
    n = model.n_layers
    if not isinstance(layer, int | np.integer) or not -n <= int(layer) < n:
        raise InputError(f"layer must be an integer in {-n}..{n - 1}, got {layer!r}")
    per_req, fx = _attentions(model, requests, ctx)
    outs = []
    for r, atts, f in zip(requests, per_req, fx, strict=True):
        mat = _select_heads(atts[int(layer)], heads)
        outs.append(MethodOutput(_scores_from_matrix(r, mat), f, {"layer": int(layer) % n, "heads": heads}))
    return outs


@register_method(
    "attention_rollout",
    description="Attention rollout through all layers with residual identity (Abnar & Zuidema 2020).",
    kind="attention",
    passes="1 forward per batch (eager attention)",
)
def attention_rollout(
    model: Model, requests: list[Request], ctx: Context, *, residual: float = 0.5
) -> list[MethodOutput]:
    if not 0.0 <= float(residual) < 1.0:
        raise InputError(f"residual must be in [0, 1), got {residual!r}")
    per_req, fx = _attentions(model, requests, ctx)
    outs = []
    for r, atts, f in zip(requests, per_req, fx, strict=True):
        L = atts[0].shape[-1]
        eye = torch.eye(L, device=atts[0].device)
        roll = eye
        for a in atts:
            a_hat = (1 - residual) * a.mean(0) + residual * eye
            a_hat = a_hat / a_hat.sum(-1, keepdim=True)
            roll = a_hat @ roll
        outs.append(MethodOutput(_scores_from_matrix(r, roll), f, {"residual": float(residual)}))
    return outs
