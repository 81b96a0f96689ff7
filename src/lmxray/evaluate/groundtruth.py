"""Ground-truth recovery: does an explanation find the evidence a task was built around?

On the zoo's model organisms the evidence for each answer is known by construction (the subject
of a fact, the key of a recall, the indirect object of IOI). For each attribution:

- ``top1_hit``: the top-ranked prompt token is an evidence token (0 or 1);
- ``topk_hit``: the fraction of the top ``k`` tokens that are evidence, ``k`` = number of
  evidence tokens (R-precision; equal to recall at ``k``);
- ``mrr``: reciprocal rank of the best-ranked evidence token (1 = first);

averaged over examples they are the hit rates and the mean reciprocal rank.

Evidence by construction is not yet the model's mechanism (a model may take a shortcut), so
:func:`verify_evidence` marks an example as verified only when removing all its evidence tokens
changes the model's answer (some target token, teacher-forced, stops being the top choice) and
removing any single other content token does not (the rule of :mod:`lmxray.zoo.verify`). Judge
methods on verified examples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..attribution import ScoreRow, score_sequences
from ..attribution.api import eval_mode
from ..attribution.base import Context
from ..errors import InputError
from ..result import Attribution
from ._common import as_mask, judged_prompt, ranking, special_ids
from .faithfulness import target_rank

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["evidence_recovery", "verify_evidence", "GROUNDTRUTH_METRICS"]

GROUNDTRUTH_METRICS = ("top1_hit", "topk_hit", "mrr")


def evidence_recovery(
    attribution: Attribution,
    evidence: Any,
    *,
    model: Model | None = None,
    k: int | None = None,
    step: int | None = None,
    aggregate: str = "sum",
    rank_by: str = "signed",
    keep_special: bool = True,
) -> dict[str, float]:
    """How well an attribution ranks the known evidence tokens.

    Args:
        attribution: the explanation.
        evidence: prompt token indices (positions of ``model.encode(prompt)``, special tokens
            included) or a boolean mask over the prompt tokens.
        model: when given, its special tokens are left out of the ranking.
        k: cut-off of ``topk_hit`` (default: the number of evidence tokens).
        step: rank one target step's scores (default: all steps ``aggregate``-d).

    Returns:
        ``top1_hit``, ``topk_hit``, ``mrr`` and ``evidence_rank`` (1-based rank of the best
        evidence token).
    """
    truth, cands, scores = judged_prompt(attribution, evidence, "evidence", model=model, step=step,
                                         aggregate=aggregate, rank_by=rank_by,
                                         keep_special=keep_special)
    n_ev = int(truth[cands].sum())
    if n_ev == 0:
        raise InputError("the evidence holds no rankable prompt token (special tokens are not ranked)")
    full = np.full(len(attribution.source_tokens), np.nan)
    full[: attribution.prompt_length] = scores
    order = ranking(full, cands, rank_by)
    is_ev = truth[order]
    k = n_ev if k is None else int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    first = int(np.argmax(is_ev)) + 1
    return {
        "top1_hit": float(is_ev[0]),
        "topk_hit": float(is_ev[:k].sum() / min(k, n_ev)),
        "mrr": 1.0 / first,
        "evidence_rank": float(first),
    }


def verify_evidence(
    model: Model,
    prompts: Sequence[str],
    targets: Sequence[str],
    evidence: Sequence[Any],
    content: Sequence[Any] | None = None,
    *,
    internal_batch_size: int | None = None,
) -> list[bool]:
    """Which examples' evidence the model really depends on (see the module docstring).

    Args:
        prompts, targets: the examples; the answer is kept while every target token is the
            model's top choice (teacher-forced).
        evidence: per example, prompt token indices (or a mask) of the evidence.
        content: per example, the tokens whose single deletion must not change the answer
            (default, or ``None`` for an example: every non-special token outside the evidence).

    One batched :func:`score_sequences` call: per example, the full prompt, the prompt without
    its evidence, and the prompt without each content token (special tokens stay).
    """
    if not (len(prompts) == len(targets) == len(evidence)):
        raise InputError("give as many targets and evidence lists as prompts")
    if content is not None and len(content) != len(prompts):
        raise InputError("give one content list (or None) per prompt")
    specials = special_ids(model)
    rows: list[ScoreRow] = []
    spans_: list[tuple[int, int]] = []
    for i, (prompt, target, ev) in enumerate(zip(prompts, targets, evidence, strict=True)):
        ids = model.encode(prompt)
        t_ids = model.encode_target(target)
        if not t_ids:
            raise InputError(f"the target of {prompt!r} tokenizes to no tokens")
        mask = as_mask(ev, len(ids), "evidence")
        given = content[i] if content is not None else None
        if given is None:
            others = [p for p, tok in enumerate(ids) if tok not in specials and not mask[p]]
        else:
            others = [int(p) for p in np.flatnonzero(as_mask(given, len(ids), "content") & ~mask)]
        start = len(rows)
        # teacher-forced: every target token scored, the answer is kept if all stay on top
        rows.append(ScoreRow(ids + t_ids[:-1], t_ids))
        kept = [t for p, t in enumerate(ids) if not mask[p]] or ids[:1]
        rows.append(ScoreRow(kept + t_ids[:-1], t_ids))
        for pos in others:
            rows.append(ScoreRow([t for p, t in enumerate(ids) if p != pos] + t_ids[:-1], t_ids))
        spans_.append((start, len(rows)))
    ctx = Context(target_fn=target_rank, internal_batch_size=internal_batch_size)
    with eval_mode(model):
        top = [bool(np.all(v == 0)) for v in score_sequences(model, rows, ctx)]
    return [top[s] and not top[s + 1] and all(top[s + 2:e]) for s, e in spans_]
