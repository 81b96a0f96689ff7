"""The shared batching engine behind every attribution method.

Two primitives:

- :func:`score_sequences`: teacher-forced target-function values for many token sequences,
  left-padded into batches, chunked by a memory budget, no gradients. A row's targets are the
  last positions of its sequence (left padding keeps them right-aligned), so every target step
  of every row comes from ONE forward pass with logits only at the target positions.
  Occlusion, faithfulness metrics and Shapley-style methods all reduce to this.
- :func:`gradient_sweep`: for each request, points ``e(alpha) = base + alpha * diff`` on a
  straight path in embedding space (IG's quadrature nodes; a single point for saliency), one
  forward per chunk of stacked points, and one vector-Jacobian product per target step from that
  one graph. It returns ``G[t, s, :] = sum_k w_k * d f_t(e(alpha_k)) / d e_s``. Because the model
  is causal, one forward serves every target step: (1 + T) forward-equivalents per point instead
  of 2T when each step is run on its own prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..model import Model
from ..targets import evaluate_target
from ._budget import ScoreRow, rows_per_chunk, run_sized, target_tensors
from ._prefix import score_rows
from .base import Context, Request

__all__ = [
    "score_sequences", "gradient_sweep", "path_values", "rows_per_chunk", "ScoreRow", "quadrature",
    "target_tensors",
]

def score_sequences(
    model: Model, rows: Sequence[ScoreRow], ctx: Context
) -> list[np.ndarray]:
    """Target-function values ``[len(row.targets)]`` for each row, batched and chunked.

    Identical rows are scored once, and rows that share a prefix share its computation: the
    rows' token trie is packed into a few rows with tree-attention masks, so each shared prefix's
    keys and values are computed once and every continuation attends to them
    (:mod:`lmxray.attribution._prefix`; the numbers equal full recomputation). ``model`` may also
    be a black-box scorer (any object with ``score(rows, ctx)``, see :mod:`lmxray.blackbox`):
    then the rows are sent to it. Results come back in input order.
    """
    if not isinstance(model, Model):
        return model.score(rows, ctx)
    with torch.inference_mode():
        return score_rows(model, rows, ctx)


def _path_chunk(
    model: Model,
    chunk: Sequence[tuple[int, int]],
    requests: Sequence[Request],
    bases: Sequence[torch.Tensor],
    diffs: Sequence[torch.Tensor],
    alphas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded embeddings ``base_i + alpha_k * diff_i`` for the ``(i, k)`` rows of a chunk."""
    dev = model.device
    L = max(bases[i].shape[0] for i, _ in chunk)
    d = bases[chunk[0][0]].shape[-1]
    pad_vec = model.embed(torch.tensor([model.pad_token_id], device=dev))[0].detach().float()
    emb = pad_vec.expand(len(chunk), L, d).clone()
    mask = torch.zeros((len(chunk), L), dtype=torch.long, device=dev)
    for j, (i, k) in enumerate(chunk):
        li = bases[i].shape[0]
        emb[j, L - li:] = bases[i] + alphas[k] * diffs[i]
        mask[j, L - li:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return emb.to(model.dtype), mask, pos, L


def _path_values(
    model: Model,
    chunk: Sequence[tuple[int, int]],
    requests: Sequence[Request],
    emb: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    ctx: Context,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Target-function values ``[B, t_max]`` (right-aligned) and their validity mask."""
    t_max = max(requests[i].n_target for i, _ in chunk)
    logits = model.forward(
        inputs_embeds=emb, attention_mask=mask, position_ids=pos, logits_to_keep=t_max
    ).logits
    rows = [ScoreRow([], requests[i].target_ids, requests[i].foil_ids) for i, _ in chunk]
    tgt, foil, valid = target_tensors(rows, t_max, logits.device)
    return evaluate_target(ctx.target_fn, logits, tgt, foil), valid, t_max


def _run_path_rows(
    model: Model, rows: list[tuple[int, int]], requests: Sequence[Request], ctx: Context,
    fn: Any, *, with_grad: bool,
) -> None:
    """``fn(chunk)`` over the ``(request, path point)`` rows in memory-sized chunks (halved and
    retried on out-of-memory; ``fn`` must not change anything before it succeeds)."""

    def size(probe: Sequence[tuple[int, int]]) -> int:
        longest = max(len(requests[i].input_ids) for i, _ in probe)
        keep = max(requests[i].n_target for i, _ in probe)
        return rows_per_chunk(model, longest, keep, with_grad=with_grad, ctx=ctx)

    def run(chunk: Sequence[tuple[int, int]]) -> list[None]:
        fn(chunk)
        return [None] * len(chunk)

    run_sized(rows, size, run, ctx)


def path_values(
    model: Model, requests: Sequence[Request], bases: Sequence[torch.Tensor],
    diffs: Sequence[torch.Tensor], alphas: torch.Tensor, ctx: Context,
) -> list[np.ndarray]:
    """Target-function values ``[K, T_i]`` at path points ``base + alpha * diff`` (no grad)."""
    out = [np.zeros((len(alphas), r.n_target), dtype=np.float32) for r in requests]
    rows = [(i, k) for i in range(len(requests)) for k in range(len(alphas))]

    def chunk_values(chunk: Sequence[tuple[int, int]]) -> None:
        emb, mask, pos, _ = _path_chunk(model, chunk, requests, bases, diffs, alphas)
        values, _, t_max = _path_values(model, chunk, requests, emb, mask, pos, ctx)
        v = values.float().cpu().numpy()
        for j, (i, k) in enumerate(chunk):
            out[i][k] = v[j, t_max - requests[i].n_target:]

    with torch.no_grad():
        _run_path_rows(model, rows, requests, ctx, chunk_values, with_grad=False)
    return out


def gradient_sweep(
    model: Model,
    requests: Sequence[Request],
    bases: Sequence[torch.Tensor],
    diffs: Sequence[torch.Tensor],
    alphas: torch.Tensor,
    weights: torch.Tensor,
    ctx: Context,
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Weighted gradients of every target step along a straight path, for each request.

    Args:
        bases, diffs: per request, ``[L_i, d]`` float32 tensors (``L_i = len(input_ids)``);
            the point at ``alpha`` is ``base + alpha * diff``.
        alphas, weights: ``[K]`` path positions and quadrature weights.

    Returns:
        ``G``: per request ``[T_i, L_i, d]`` float32, ``sum_k w_k * grad f_t(e(alpha_k))``;
        ``F``: per request ``[K, T_i]``, the target function at each path point.
    """
    dev = model.device
    k_pts = len(alphas)
    G = [torch.zeros((r.n_target, b.shape[0], b.shape[-1]), dtype=torch.float32, device=dev)
         for r, b in zip(requests, bases, strict=True)]
    F = [np.zeros((k_pts, r.n_target), dtype=np.float32) for r in requests]
    rows = [(i, k) for i in range(len(requests)) for k in range(k_pts)]

    def chunk_grads(chunk: Sequence[tuple[int, int]]) -> None:
        emb, mask, pos, L = _path_chunk(model, chunk, requests, bases, diffs, alphas)
        emb.requires_grad_(True)
        values, valid, t_max = _path_values(model, chunk, requests, emb, mask, pos, ctx)
        w_rows = torch.stack([weights[k] for _, k in chunk]).to(values.device, values.dtype)
        groups = _request_groups(chunk)
        steps = [j for j in range(t_max) if bool(valid[:, j].any())]
        # collected first, added to G only when every step's VJP succeeded (an out-of-memory
        # retry of the chunk must not count anything twice)
        adds: list[tuple[int, int, torch.Tensor]] = []
        for j, g in _step_vjps(values, emb, valid, w_rows, steps):
            for i, a, b in groups:
                t = j - (t_max - requests[i].n_target)
                if t >= 0:
                    adds.append((i, t, g[a:b, L - bases[i].shape[0]:].sum(0)))
        v = values.detach().float().cpu().numpy()
        for j, (i, k) in enumerate(chunk):
            F[i][k] = v[j, t_max - requests[i].n_target:]
        for i, t, g_sum in adds:
            G[i][t] += g_sum

    with torch.enable_grad():
        _run_path_rows(model, rows, requests, ctx, chunk_grads, with_grad=True)
    return G, F


def _request_groups(chunk: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``[(request, first row, end row)]``: the rows of one request are contiguous in a chunk."""
    groups: list[tuple[int, int, int]] = []
    for j, (i, _) in enumerate(chunk):
        if groups and groups[-1][0] == i:
            groups[-1] = (i, groups[-1][1], j + 1)
        else:
            groups.append((i, j, j + 1))
    return groups


# A chunk of at most this many token positions gets all its target steps' VJPs in one batched
# backward (``is_grads_batched``): small matrices leave the cores idle, so batching the T
# cotangents wins (saliency on one short prompt: ~25% less time). Bigger chunks loop over the
# steps, which was faster there (the matmuls are already large; vmap adds copies).
BATCHED_VJP_MAX_TOKENS = 1024


def _step_vjps(
    values: torch.Tensor, emb: torch.Tensor, valid: torch.Tensor, w_rows: torch.Tensor,
    steps: list[int],
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(j, d(sum_rows w_row * values[row, j]) / d emb)`` for each target step ``j``.

    One VJP per step from the same graph, either as one batched backward (small chunks) or as a
    loop of backward calls that keep the graph until the last one.
    """
    seeds = [w_rows * valid[:, j].to(values.dtype) for j in steps]
    if len(steps) > 1 and emb.shape[0] * emb.shape[1] <= BATCHED_VJP_MAX_TOKENS:
        cot = torch.zeros((len(steps), *values.shape), dtype=values.dtype, device=values.device)
        for n, (j, seed) in enumerate(zip(steps, seeds, strict=True)):
            cot[n, :, j] = seed
        (g,) = torch.autograd.grad(values, emb, grad_outputs=cot, is_grads_batched=True)
        for n, j in enumerate(steps):
            yield j, g[n].float()
        return
    for n, (j, seed) in enumerate(zip(steps, seeds, strict=True)):
        (g,) = torch.autograd.grad(
            values[:, j], emb, grad_outputs=seed, retain_graph=n < len(steps) - 1
        )
        yield j, g.float()


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` on [0, 1] for ``gausslegendre``, ``trapezoid`` or ``riemann_*``."""
    if n < 1:
        raise InputError(f"n_steps must be at least 1, got {n}")
    if rule == "gausslegendre":
        return gauss_legendre(n)
    if rule == "trapezoid":
        if n < 2:
            raise InputError("trapezoid integration needs n_steps >= 2")
        a = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return a, w
    if rule == "riemann_middle":
        return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
    if rule == "riemann_right":
        return np.arange(1, n + 1) / n, np.full(n, 1.0 / n)
    if rule == "riemann_left":
        return np.arange(n) / n, np.full(n, 1.0 / n)
    raise InputError(
        f"unknown integration rule {rule!r}; use gausslegendre, trapezoid, riemann_middle, "
        "riemann_left or riemann_right"
    )
