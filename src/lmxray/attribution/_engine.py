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

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model import Model
from ..targets import evaluate_target
from .base import Context, Request

__all__ = [
    "score_sequences", "gradient_sweep", "path_values", "rows_per_chunk", "ScoreRow", "quadrature",
]

_MAX_ROWS = 256


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        avail = 8 << 30
    return int(min(avail * 0.3, 4 << 30))


def rows_per_chunk(
    model: Model, seq_len: int, n_keep: int, *, with_grad: bool, ctx: Context | None = None
) -> int:
    """How many sequences of ``seq_len`` tokens fit in one forward (and backward) pass.

    Activation memory per sequence is estimated as ``layers * L * (34 d + 5 h L)`` half-words
    (Korthikanti et al. 2022, with grad) or two layers' worth (no grad), plus the kept logits.
    """
    if ctx is not None and ctx.internal_batch_size:
        return max(1, int(ctx.internal_batch_size))
    budget = ctx.memory_budget if ctx is not None and ctx.memory_budget else None
    if budget is None:
        budget = _available_memory(model.device)
    elt = torch.finfo(model.dtype).bits // 8
    d, h, L = model.d_model, model.n_heads, max(seq_len, 1)
    layers = model.n_layers if with_grad else 2
    act = layers * L * (34 * d + 5 * h * L) * elt / 2
    logits = n_keep * model.vocab_size * 4 * (3 if with_grad else 2)
    per_row = act + logits + 1
    return int(max(1, min(_MAX_ROWS, budget // per_row)))


@dataclass
class ScoreRow:
    """A sequence to score and the targets its last ``len(targets)`` positions predict."""

    input_ids: list[int]
    targets: list[int]
    foils: list[int] | None = None


def _target_tensors(
    rows: Sequence[ScoreRow], t_max: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    tgt = torch.zeros((len(rows), t_max), dtype=torch.long)
    valid = torch.zeros((len(rows), t_max), dtype=torch.bool)
    has_foil = any(r.foils is not None for r in rows)
    foil = torch.zeros((len(rows), t_max), dtype=torch.long) if has_foil else None
    for i, r in enumerate(rows):
        n = len(r.targets)
        if n:
            tgt[i, t_max - n:] = torch.as_tensor(r.targets)
            valid[i, t_max - n:] = True
            if foil is not None and r.foils is not None:
                foil[i, t_max - n:] = torch.as_tensor(r.foils)
    return tgt.to(device), (foil.to(device) if foil is not None else None), valid.to(device)


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
    from ._prefix import score_rows

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
    tgt, foil, valid = _target_tensors(rows, t_max, logits.device)
    return evaluate_target(ctx.target_fn, logits, tgt, foil), valid, t_max


def _chunks(
    model: Model, rows: list[tuple[int, int]], requests: Sequence[Request], ctx: Context,
    *, with_grad: bool,
):
    start = 0
    while start < len(rows):
        probe = rows[start:start + _MAX_ROWS]
        longest = max(len(requests[i].input_ids) for i, _ in probe)
        keep = max(requests[i].n_target for i, _ in probe)
        n = rows_per_chunk(model, longest, keep, with_grad=with_grad, ctx=ctx)
        yield rows[start:start + n]
        start += n


def path_values(
    model: Model,
    requests: Sequence[Request],
    bases: Sequence[torch.Tensor],
    diffs: Sequence[torch.Tensor],
    alphas: torch.Tensor,
    ctx: Context,
) -> list[np.ndarray]:
    """Target-function values ``[K, T_i]`` at path points ``base + alpha * diff`` (no grad)."""
    out = [np.zeros((len(alphas), r.n_target), dtype=np.float32) for r in requests]
    rows = [(i, k) for i in range(len(requests)) for k in range(len(alphas))]
    with torch.no_grad():
        for chunk in _chunks(model, rows, requests, ctx, with_grad=False):
            emb, mask, pos, _ = _path_chunk(model, chunk, requests, bases, diffs, alphas)
            values, _, t_max = _path_values(model, chunk, requests, emb, mask, pos, ctx)
            v = values.float().cpu().numpy()
            for j, (i, k) in enumerate(chunk):
                out[i][k] = v[j, t_max - requests[i].n_target:]
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
    with torch.enable_grad():
        for chunk in _chunks(model, rows, requests, ctx, with_grad=True):
            emb, mask, pos, L = _path_chunk(model, chunk, requests, bases, diffs, alphas)
            emb.requires_grad_(True)
            values, valid, t_max = _path_values(model, chunk, requests, emb, mask, pos, ctx)
            v = values.detach().float().cpu().numpy()
            for j, (i, k) in enumerate(chunk):
                F[i][k] = v[j, t_max - requests[i].n_target:]
            w_rows = torch.stack([weights[k] for _, k in chunk]).to(values.device, values.dtype)
            # rows of one request are contiguous in a chunk: [(i, start, end)]
            groups: list[tuple[int, int, int]] = []
            for j, (i, _) in enumerate(chunk):
                if groups and groups[-1][0] == i:
                    groups[-1] = (i, groups[-1][1], j + 1)
                else:
                    groups.append((i, j, j + 1))
            steps = [j for j in range(t_max) if bool(valid[:, j].any())]
            for j, g in _step_vjps(values, emb, valid, w_rows, steps):
                for i, a, b in groups:
                    t = j - (t_max - requests[i].n_target)
                    if t >= 0:
                        G[i][t] += g[a:b, L - bases[i].shape[0]:].sum(0)
            del values, emb
    return G, F


# A chunk of at most this many token positions gets all its target steps' VJPs in one batched
# backward (``is_grads_batched``): small matrices leave the cores idle, so batching the T
# cotangents wins (saliency on one short prompt: ~25% less time). Bigger chunks loop over the
# steps, which was faster there (the matmuls are already large; vmap adds copies).
BATCHED_VJP_MAX_TOKENS = 1024


def _step_vjps(values, emb, valid, w_rows, steps):
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
    from ..errors import InputError

    if n < 1:
        raise InputError("n_steps must be at least 1")
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
