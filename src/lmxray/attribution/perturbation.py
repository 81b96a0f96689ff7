"""Perturbation attribution: occlusion (leave one token out).

``scores[t, s] = f_t(x) - f_t(x with token s removed)`` (``replace="remove"``, default) or with
token ``s`` replaced by a baseline token (``replace="baseline"``, positions unchanged; Captum's
FeatureAblation convention when ``baseline=0``). Every source position that a step reads is
perturbed, earlier target tokens included; each perturbed sequence scores every target step in one
teacher-forced forward pass, and all perturbed sequences are batched
(:func:`~lmxray.attribution._engine.score_sequences`).

``sources="prompt"`` occludes prompt tokens only (target tokens stay; their cells are NaN), the
convention of Captum's ``LLMAttribution``.

Passes: 1 + (S - 1) sequence evaluations per prompt (S sources), batched; each perturbed sequence
recomputes only the positions from the occluded token on (prefix KV-cache reuse in
:func:`~lmxray.attribution._engine.score_sequences`): about S^2 / 2 token positions instead of S^2.
Shapley values, KernelSHAP and LIME over the same kind of perturbations live in
:mod:`~lmxray.attribution.shapley` and :mod:`~lmxray.attribution.surrogate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..model import Model
from ._engine import ScoreRow, score_sequences
from ._games import check_replace
from .base import Context, MethodOutput, Request, nan_mask_scores, register_method

__all__ = ["occlusion_rows", "occlude", "check_replace"]


def occlusion_rows(
    req: Request, position: int, replace: str, baseline_id: int | None
) -> tuple[ScoreRow, int]:
    """The perturbed sequence that occludes ``position`` and the first target step it scores.

    Steps ``t`` with ``n_prompt + t <= position`` do not read the token and are not scored.
    """
    first = max(0, position - req.n_prompt + 1)
    ids = list(req.input_ids)
    if replace == "remove":
        del ids[position]
        # a step whose whole prefix was the removed token cannot be scored
        first = max(first, req.n_target - len(ids))
    else:
        assert baseline_id is not None
        ids[position] = baseline_id
    foils = req.foil_ids[first:] if req.foil_ids is not None else None
    return ScoreRow(ids, req.target_ids[first:], foils), first


def occlude(
    model: Model,
    requests: list[Request],
    ctx: Context,
    positions: list[list[int]],
    replace: str,
    baseline_id: int | None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each request, ``(f(x) [T], drop [len(positions), T])`` with NaN where not scored."""
    rows: list[ScoreRow] = []
    meta: list[tuple[int, int, int]] = []  # (request, position index, first step)
    for i, r in enumerate(requests):
        rows.append(ScoreRow(r.input_ids, r.target_ids, r.foil_ids))
        meta.append((i, -1, 0))
        for p_idx, p in enumerate(positions[i]):
            row, first = occlusion_rows(r, p, replace, baseline_id)
            rows.append(row)
            meta.append((i, p_idx, first))
    values = score_sequences(model, rows, ctx)
    full = [np.zeros(r.n_target, np.float32) for r in requests]
    drops = [np.full((len(positions[i]), r.n_target), np.nan, np.float32) for i, r in enumerate(requests)]
    for (i, p_idx, _), v in zip(meta, values, strict=True):
        if p_idx < 0:
            full[i] = v
    for (i, p_idx, first), v in zip(meta, values, strict=True):
        if p_idx >= 0:
            drops[i][p_idx, first:] = full[i][first:] - v
    return list(zip(full, drops, strict=True))


@register_method(
    "occlusion",
    description="Leave-one-token-out: drop in the target when a source token is removed or replaced.",
    kind="perturbation",
    passes="1 + (S - 1) sequence evaluations per prompt (prompt only: 1 + P), batched; "
    "shared prefixes from the KV cache",
)
def occlusion(
    model: Model, requests: list[Request], ctx: Context, *, replace: str = "remove",
    baseline: Any = "auto", sources: str = "all",
) -> list[MethodOutput]:
    baseline_id, desc = check_replace(model, replace, baseline)
    if sources not in ("all", "prompt"):
        raise InputError(f"sources must be 'all' or 'prompt', got {sources!r}")
    positions = [
        list(range(len(r.input_ids) if sources == "all" else r.n_prompt)) for r in requests
    ]
    results = occlude(model, requests, ctx, positions, replace, baseline_id)
    outs = []
    for r, (fx, drop) in zip(requests, results, strict=True):
        scores = np.full((r.n_target, r.n_source), np.nan, np.float32)
        scores[:, : drop.shape[0]] = drop.T
        scores = nan_mask_scores(scores, r.n_prompt)
        info: dict[str, Any] = {"replace": replace}
        if replace == "baseline":
            info["baseline"] = desc
        if sources == "prompt":
            info["sources"] = "prompt"
        defined = np.arange(r.n_source)[None, :] < (r.n_prompt + np.arange(r.n_target))[:, None]
        undefined = int((np.isnan(scores) & defined).sum())
        if undefined:  # target tokens not occluded, or a step left with an empty prefix
            info["undefined_cells"] = undefined
        outs.append(MethodOutput(scores, fx, info))
    return outs


@register_method(
    "random",
    description="Control: seeded random scores (a floor every real method must beat).",
    kind="control",
    passes="none for scores (1 forward for the target values)",
)
def random_scores(
    model: Model, requests: list[Request], ctx: Context, *, seed: int = 0
) -> list[MethodOutput]:
    outs = []
    for r in requests:
        rng = np.random.default_rng([int(seed), *r.source_ids])  # per request: batch-invariant
        scores = rng.standard_normal((r.n_target, r.n_source)).astype(np.float32)
        outs.append(MethodOutput(nan_mask_scores(scores, r.n_prompt), None, {"seed": seed}))
    return outs
