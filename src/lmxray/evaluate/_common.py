"""Helpers shared by the evaluation modules: rationales given as indices or masks, and the
rankings of source tokens and special-token positions of :mod:`lmxray.attribution.removal`
(re-exported here).

A ranking orders the *candidate* positions of one attribution by decreasing importance.
Candidates are the source positions a step can read (``s < prompt_length + t``), or only the
prompt positions, less the tokenizer's special tokens (BOS and friends) unless asked otherwise:
removing BOS mostly measures how a model copes without BOS, not the explanation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..attribution.removal import (
    RANK_BY,
    candidate_positions,
    check_rank_by,
    ranking,
    special_ids,
)
from ..errors import InputError
from ..result import Attribution

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = [
    "RANK_BY", "special_ids", "check_rank_by", "ranking", "candidate_positions", "prompt_scores",
    "as_mask", "spans", "nanmean", "judged_prompt",
]

def prompt_scores(attribution: Attribution, step: int | None = None, aggregate: str = "sum") -> np.ndarray:
    """One score per prompt token: step ``step``'s row, or all steps aggregated (``sum`` |
    ``mean`` | ``abs_sum``)."""
    n_p = attribution.prompt_length
    if step is None:
        return attribution.aggregate(aggregate)
    n_t = len(attribution.target_tokens)
    if not -n_t <= step < n_t:
        raise InputError(f"step {step} is out of range: the attribution has {n_t} target steps")
    return np.asarray(attribution.scores[step, :n_p], dtype=np.float64)


def as_mask(rationale: Any, n: int, what: str = "rationale") -> np.ndarray:
    """A boolean mask ``[n]`` from token indices or a boolean/0-1 sequence of length ``n``."""
    if rationale is None:
        raise InputError(f"no {what} given")
    arr = np.asarray(rationale)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise InputError(f"the {what} mask has {arr.size} entries but the prompt has {n} tokens")
        return arr.copy()
    if arr.size == 0:
        return np.zeros(n, dtype=bool)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"the {what} must be a list of prompt token indices or a boolean mask, got {rationale!r}"
        )
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(
            f"the {what} index {int(arr.max() if arr.max() >= n else arr.min())} is outside the "
            f"prompt's {n} tokens (indices count from 0, special tokens included)"
        )
    mask = np.zeros(n, dtype=bool)
    mask[arr] = True
    return mask


def spans(mask: Sequence[bool] | np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as ``(start, end)`` half-open intervals."""
    out: list[tuple[int, int]] = []
    start = None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or np.isnan(arr).all():
        return float("nan")
    return float(np.nanmean(arr))


def judged_prompt(
    attribution: Any,
    marks: Any,
    what: str,
    *,
    model: Model | None,
    step: int | None,
    aggregate: str,
    rank_by: str,
    keep_special: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What plausibility and ground-truth recovery judge: ``(truth, candidates, scores)``, the
    marked prompt tokens as a mask ``[P]``, the rankable prompt positions (special tokens left
    out when ``keep_special`` and a model is given), and one score per prompt token (step
    ``step``'s or all steps ``aggregate``-d)."""
    if not isinstance(attribution, Attribution):
        raise InputError(f"expected an lmxray Attribution, got {type(attribution).__name__}")
    check_rank_by(rank_by)
    truth = as_mask(marks, attribution.prompt_length, what)
    cands = candidate_positions(
        attribution, 0, sources="prompt", specials=special_ids(model) if keep_special else frozenset()
    )
    return truth, cands, prompt_scores(attribution, step, aggregate)

