"""Aggregate statistics of the self-explanation tests: seeded percentile bootstrap intervals.

- :func:`bootstrap_ci`: mean and its ``1 - alpha`` percentile bootstrap interval (``None`` and NaN
  values are left out; no values: NaN).
- :func:`proportion`: the same for a share of true values.
- :func:`paired_difference`: mean of ``a - b`` over pairs (e.g. accuracy unbiased minus biased,
  per item) and its interval.
- :func:`overlap`: whether two intervals overlap (the must-show separation test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["bootstrap_ci", "proportion", "paired_difference", "overlap", "CI"]

CI = tuple[float, float, float]
_NAN: CI = (math.nan, math.nan, math.nan)
_CELLS = 4_000_000  # resample cells drawn at once (memory bound)


def _finite(values: Sequence[Any]) -> np.ndarray:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    x = np.asarray(vals, dtype=np.float64)
    return x[np.isfinite(x)]


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` and its percentile bootstrap ``1 - alpha``
    interval over ``n`` resamples (seeded; None/NaN values left out; NaN for no values)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    x = _finite(values)
    if x.size == 0:
        return _NAN
    rng = np.random.default_rng(seed)
    step = max(1, _CELLS // x.size)
    means = np.concatenate([
        x[rng.integers(0, x.size, size=(min(step, n - a), x.size))].mean(axis=1)
        for a in range(0, n, step)
    ])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(x.mean()), float(lo), float(hi))


def proportion(flags: Sequence[Any], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> CI:
    """Share of true values among the non-None ones, with its bootstrap interval."""
    return bootstrap_ci([float(bool(f)) for f in flags if f is not None], n=n, seed=seed, alpha=alpha)


def paired_difference(a: Sequence[Any], b: Sequence[Any], n: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> CI:
    """Mean of ``a[i] - b[i]`` over the pairs where both are known, with its interval."""
    if len(a) != len(b):
        raise InputError(f"paired values differ in length ({len(a)} vs {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return bootstrap_ci(diffs, n=n, seed=seed, alpha=alpha)


def overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the intervals ``(value, lo, hi)`` ``a`` and ``b`` overlap (NaN: True, unknown)."""
    if any(math.isnan(float(v)) for v in (a[1], a[2], b[1], b[2])):
        return True
    return not (a[2] < b[1] or b[2] < a[1])
