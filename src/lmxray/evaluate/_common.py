"""Helpers shared by the evaluation modules: rankings of source tokens, special-token positions,
and rationales given as indices or masks.

A ranking orders the *candidate* positions of one attribution by decreasing importance.
Candidates are the source positions a step can read (``s < prompt_length + t``), or only the
prompt positions, less the tokenizer's special tokens (BOS and friends) unless asked otherwise:
removing BOS mostly measures how a model copes without BOS, not the explanation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..result import Attribution

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

RANK_BY = ("signed", "abs")


def special_ids(model: Model | None) -> frozenset[int]:
    """Token ids of the model's special tokens (empty without a model)."""
    if model is None:
        return frozenset()
    return frozenset(int(i) for i in (model.tokenizer.all_special_ids or []))


def check_rank_by(rank_by: str) -> None:
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be 'signed' or 'abs', got {rank_by!r}")


def ranking(scores: np.ndarray, candidates: np.ndarray, rank_by: str = "signed") -> np.ndarray:
    """Candidate positions sorted by decreasing importance.

    Args:
        scores: ``[S]`` scores of every source position (NaN allowed: ranked last).
        candidates: ``[n]`` positions that may be ranked.
        rank_by: ``"signed"`` (largest positive contribution first) or ``"abs"`` (largest
            magnitude first).

    Returns:
        ``[n]`` int array of positions; ties keep position order (stable sort).
    """
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    v = np.asarray(scores, dtype=np.float64)[candidates]
    if rank_by == "abs":
        v = np.abs(v)
    v = np.where(np.isnan(v), -np.inf, v)
    order = np.argsort(-v, kind="stable")
    return np.asarray(candidates, dtype=np.int64)[order]


def candidate_positions(
    attribution: Attribution,
    step: int,
    *,
    sources: str = "all",
    specials: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Positions step ``step`` reads that an evaluation may remove or rank.

    ``sources="all"``: prompt and earlier target tokens; ``"prompt"``: prompt tokens only.
    Positions holding a special token id are left out.
    """
    if sources not in ("all", "prompt"):
        raise InputError(f"sources must be 'all' or 'prompt', got {sources!r}")
    n = attribution.prompt_length + (step if sources == "all" else 0)
    ids = attribution.source_ids
    pos = np.arange(n, dtype=np.int64)
    if specials and ids is not None:
        keep = np.array([int(ids[p]) not in specials for p in pos], dtype=bool)
        pos = pos[keep]
    return pos


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

