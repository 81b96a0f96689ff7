"""Removing tokens from an input: the shared core of faithfulness metrics and verification.

A *ranking* orders the *candidate* positions of one attribution step by decreasing importance.
Candidates are the source positions a step can read (``s < prompt_length + t``), or only the
prompt positions, less the tokenizer's special tokens (BOS and friends) unless asked otherwise:
removing BOS mostly measures how a model copes without BOS, not the explanation.

:class:`Perturber` removes (or replaces by a baseline token) a set of positions from a prefix;
:class:`RowBank` collects the perturbed sequences so that each distinct one is scored once by
:func:`~lmxray.attribution._engine.score_sequences`. :mod:`lmxray.evaluate.faithfulness` and
:mod:`lmxray.attribution.verify` are built on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..result import Attribution
from ._budget import ScoreRow

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = [
    "RANK_BY",
    "special_ids",
    "check_rank_by",
    "ranking",
    "candidate_positions",
    "bin_sizes",
    "curve_sizes",
    "RowBank",
    "Perturber",
    "empty_context_token",
]

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


def bin_sizes(n: int, bins: Sequence[float]) -> list[int]:
    """Tokens in each top-k% bin of ``n`` removable tokens: ``ceil(pct * n / 100)``, in ``[1, n]``."""
    if n <= 0:
        return []
    # round before ceil so that e.g. 10% of 30 is 3, not 4 (0.1 * 30 = 3.0000000000000004)
    return [min(n, max(1, math.ceil(round(float(b) * n / 100.0, 9)))) for b in bins]


def curve_sizes(n: int, n_steps: int) -> list[int]:
    """Tokens removed (or inserted) at each of the ``n_steps + 1`` curve points: ``round(j n / n_steps)``."""
    return [(2 * j * n + n_steps) // (2 * n_steps) for j in range(n_steps + 1)]


class RowBank:
    """Perturbed sequences to score, each stored once."""

    def __init__(self) -> None:
        self.rows: list[ScoreRow] = []
        self._index: dict[tuple[tuple[int, ...], int], int] = {}

    def add(self, ids: list[int], target: int) -> int:
        key = (tuple(ids), target)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self.rows)
            self._index[key] = idx
            self.rows.append(ScoreRow(list(ids), [target]))
        return idx


@dataclass
class Perturber:
    """Drops (``removal="remove"``) or replaces by ``baseline_id`` a set of positions; an
    input left empty becomes ``[fallback_id]``."""

    removal: str
    baseline_id: int | None
    fallback_id: int

    def __call__(self, prefix: list[int], drop: set[int]) -> list[int]:
        if self.removal == "remove":
            ids = [tok for i, tok in enumerate(prefix) if i not in drop]
            return ids or [self.fallback_id]
        assert self.baseline_id is not None
        return [self.baseline_id if i in drop else tok for i, tok in enumerate(prefix)]



def empty_context_token(model: Model) -> int:
    """The token that stands for an empty context: BOS, else EOS, else pad, else 0."""
    tok = model.tokenizer
    return next((int(i) for i in (tok.bos_token_id, tok.eos_token_id, model.pad_token_id)
                 if i is not None), 0)
