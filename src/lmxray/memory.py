"""One memory budget and one out-of-memory back-off, for every batched sweep in lmxray.

The attribution engine, prefix-shared scoring and the internals sweeps size their chunks from
:func:`available_memory` and their own per-row estimates, through :func:`rows_that_fit`, and run
them through :func:`run_chunks`, which halves the chunk and retries when the device runs out of
memory and records each back-off in the caller's ``info``.

Budget: on CUDA 70% of the free device memory; on CPU 30% of the available RAM, at most 4 GiB.
(lmxray had two budgets: these, benchmarked with the attribution engine, and 60% / 25% / 2 GiB
in the internals sweeps, a guess made before there was any back-off. On CUDA an over-estimate is
now caught by the back-off; on CPU the 4 GiB cap keeps a process far from the OOM killer, which
no back-off can catch.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, TypeVar

import torch

from .errors import InputError

__all__ = ["available_memory", "rows_that_fit", "run_chunks", "is_oom", "MAX_ROWS",
           "check_batch_size"]

MAX_ROWS = 256
CUDA_SHARE = 0.7
CPU_SHARE = 0.3
CPU_CAP = 4 << 30

T = TypeVar("T")
R = TypeVar("R")


def _cuda_free(device: torch.device) -> int:
    return int(torch.cuda.mem_get_info(device)[0])


def available_memory(device: torch.device | str | Sequence[torch.device | str]) -> int:
    """Bytes a sweep may use for activations on ``device``; for a model placed across several
    devices (``Model.devices``), the smallest budget among them (every device holds a share of
    each chunk's activations)."""
    if not isinstance(device, torch.device | str):
        budgets = [available_memory(d) for d in dict.fromkeys(str(d) for d in device)]
        if not budgets:
            raise InputError("no device to read the memory budget of")
        return min(budgets)
    device = torch.device(device)
    if device.type == "cuda":
        return int(_cuda_free(device) * CUDA_SHARE)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        avail = 8 << 30
    return int(min(avail * CPU_SHARE, CPU_CAP))


def check_batch_size(value: int | None, name: str = "internal_batch_size") -> int | None:
    """``None`` (automatic) or a positive int; anything else is an :class:`InputError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive whole number or None (automatic), got {value!r}")
    return value


def rows_that_fit(per_row_bytes: float, *, device: torch.device | str | Sequence[torch.device | str],
                  memory_budget: int | None = None, batch_size: int | None = None,
                  max_rows: int = MAX_ROWS) -> int:
    """Rows per chunk: ``batch_size`` when given, else the budget over the per-row estimate,
    between 1 and ``max_rows``."""
    if check_batch_size(batch_size, "batch size"):
        return int(batch_size)  # type: ignore[arg-type]
    if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget < 1):
        raise InputError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    budget = memory_budget or available_memory(device)
    return int(max(1, min(max_rows, budget // max(per_row_bytes, 1.0))))


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA, MPS or a CPU allocator's)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_chunks(items: Sequence[T], rows: int, fn: Callable[[Sequence[T]], list[R]],
               info: MutableMapping[str, Any] | None = None) -> list[R]:
    """``fn`` over ``items`` in chunks of ``rows``; on out-of-memory the chunk is halved and
    retried (down to one row, then the error propagates). Each back-off is appended to
    ``info["oom_backoff"]`` as ``[rows before, rows after]``; later chunks keep the smaller size.
    ``fn`` returns one result per item.
    """
    out: list[R] = []
    i = 0
    while i < len(items):
        chunk = items[i : i + rows]
        try:
            res = fn(chunk)
        except Exception as exc:
            if not is_oom(exc) or rows == 1:
                raise
            new = max(1, rows // 2)
            if info is not None:
                info.setdefault("oom_backoff", []).append([rows, new])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            rows = new
            continue
        out.extend(res)
        i += len(chunk)
    return out
