"""Rows, chunk sizes and out-of-memory back-off shared by the engine and prefix packing.

Both :mod:`~lmxray.attribution._engine` (gradient sweeps, plain scoring) and
:mod:`~lmxray.attribution._prefix` (packed scoring) size their chunks here, from the one memory
budget of :mod:`lmxray.memory`, and run them through :func:`lmxray.memory.run_chunks`, which halves
a chunk that runs out of device memory and records the back-off in ``ctx.info["oom_backoff"]``
(copied into every result's ``info``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

from ..memory import MAX_ROWS, rows_that_fit, run_chunks

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model
    from .base import Context

__all__ = ["ScoreRow", "rows_per_chunk", "target_tensors", "run_sized", "MAX_ROWS"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ScoreRow:
    """A sequence to score and the targets its last ``len(targets)`` positions predict."""

    input_ids: list[int]
    targets: list[int]
    foils: list[int] | None = None


def rows_per_chunk(
    model: Model, seq_len: int, n_keep: int, *, with_grad: bool, ctx: Context | None = None
) -> int:
    """How many sequences of ``seq_len`` tokens fit in one forward (and backward) pass.

    Activation memory per sequence is estimated as ``layers * L * (34 d + 5 h L)`` half-words
    (Korthikanti et al. 2022, with grad) or two layers' worth (no grad), plus the kept logits;
    the budget is :func:`lmxray.memory.available_memory` over every device the model uses
    (``Model.devices``) unless ``ctx`` sets one (or a batch size).
    """
    elt = torch.finfo(model.dtype).bits // 8
    d, h, L = model.d_model, model.n_heads, max(seq_len, 1)
    layers = model.n_layers if with_grad else 2
    act = layers * L * (34 * d + 5 * h * L) * elt / 2
    logits = n_keep * model.vocab_size * 4 * (3 if with_grad else 2)
    return rows_that_fit(
        act + logits + 1,
        device=model.devices,
        memory_budget=ctx.memory_budget if ctx is not None else None,
        batch_size=ctx.internal_batch_size if ctx is not None else None,
    )


def target_tensors(
    rows: Sequence[ScoreRow], t_max: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Right-aligned ``[B, t_max]`` targets, foils (or ``None``) and validity of ``rows``."""
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


def run_sized(
    items: Sequence[T],
    size: Callable[[Sequence[T]], int],
    fn: Callable[[Sequence[T]], list[R]],
    ctx: Context,
) -> list[R]:
    """``fn`` over consecutive chunks of ``items``, one result per item.

    Each chunk holds ``size(next MAX_ROWS items)`` items (the memory budget), and at most as many
    as an earlier out-of-memory back-off left; a chunk that runs out of memory is halved and
    retried (:func:`lmxray.memory.run_chunks`, recorded in ``ctx.info["oom_backoff"]``).
    """
    out: list[R] = []
    start, cap = 0, None
    while start < len(items):
        n = size(items[start:start + MAX_ROWS])
        if cap is not None:
            n = min(n, cap)
        chunk = items[start:start + n]
        before = len(ctx.info.get("oom_backoff", ()))
        out.extend(run_chunks(chunk, len(chunk), fn, ctx.info))
        backoffs = ctx.info.get("oom_backoff", ())
        if len(backoffs) > before:
            cap = int(backoffs[-1][1])
        start += len(chunk)
    return out
