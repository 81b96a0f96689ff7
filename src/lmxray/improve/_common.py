"""Shared pieces of the improvement methods: labelled examples and batched scoring.

Every improver reads the one example type, :class:`lmxray.examples.AnnotatedExample`: a prompt,
the expected target, and its *rationale* (what should decide the answer) and *irrelevant* marks
(a shortcut). :func:`as_labelled` builds them from zoo items, zoo ``Example`` objects, dicts (JSONL
rows), ``(prompt, target)`` pairs or ``AnnotatedExample`` objects, and resolves every mark to token
positions of ``model.encode(prompt)`` with :meth:`AnnotatedExample.positions` (the one span rule,
shared with ``evaluate`` and the zoo), so the improvers read ``e.rationale`` / ``e.irrelevant`` as
sorted positions. ``Labelled`` is the public name kept for ``AnnotatedExample``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..attribution import Context
from ..attribution._engine import ScoreRow, score_sequences  # LEAD: public in lmxray.attribution
from ..errors import InputError
from ..examples import AnnotatedExample
from ..model import Model
from ..targets import logprob
from ..zoo import generate

__all__ = [
    "Labelled",
    "as_labelled",
    "zoo_labelled",
    "target_correct",
    "label_logprobs",
]

Labelled = AnnotatedExample  # the name the improve API has always used

_ROLES = ("rationale", "irrelevant")


def _get(e: Any, key: str) -> Any:
    return e.get(key) if isinstance(e, Mapping) else getattr(e, key, None)


def _from_zoo(e: Any) -> AnnotatedExample:
    """A zoo ``Item`` (``spans`` of roles evidence / cue / shortcut) or zoo ``Example``
    (``evidence_spans`` ...): the evidence and cue spans are the rationale, the shortcut spans
    are irrelevant."""
    if _get(e, "spans") is not None:
        spans = list(e.spans)
        rat = [(a, b) for a, b, r in spans if r in ("evidence", "cue")]
        irr = [(a, b) for a, b, r in spans if r == "shortcut"]
    else:
        rat = [*e.evidence_spans, *(getattr(e, "cue_spans", ()) or ())]
        irr = list(getattr(e, "shortcut_spans", ()) or ())
    return AnnotatedExample(
        prompt=e.prompt,
        target=e.target,
        label=e.label,
        rationale=tuple(rat),
        irrelevant=tuple(irr),
        meta={"task": e.task, "split": e.split, **dict(e.meta)},
    )


def _from_dict(e: Any, k: int) -> AnnotatedExample:
    if not isinstance(e, Mapping):
        raise InputError(
            f"cannot read example {k} ({type(e).__name__}); give dicts with prompt and target, "
            "zoo examples or (prompt, target) pairs"
        )
    row = dict(e)
    label = row.get("label")
    if row.get("target") is None and label is not None:
        row["target"] = " " + str(label).strip()
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
        raise InputError(f"example {k} needs a 'prompt' string and a 'target' (or 'label') string")
    if not row["prompt"].strip():
        raise InputError(f"example {k} has an empty prompt")
    if not row["target"]:
        raise InputError(f"example {k} has an empty target; give target (or label)")
    if label is not None:
        row["label"] = str(label).strip()
    return AnnotatedExample.from_record(row, k)


def _example(e: Any, k: int) -> AnnotatedExample:
    if isinstance(e, AnnotatedExample):
        ex = e
    elif isinstance(e, tuple | list) and len(e) == 2 and all(isinstance(v, str) for v in e):
        ex = _from_dict({"prompt": e[0], "target": e[1]}, k)
    elif _get(e, "prompt") is not None and (
        _get(e, "spans") is not None or _get(e, "evidence_spans") is not None
    ):
        ex = _from_zoo(e)
    else:
        ex = _from_dict(e, k)
    if not ex.target:
        raise InputError(f"example {k} has an empty target; give target (or label)")
    return ex


def _resolve(model: Any, ex: AnnotatedExample, k: int, extra: Sequence[str]) -> AnnotatedExample:
    """``ex`` with its rationale and irrelevant marks as token positions (the one span rule),
    plus every occurrence of the ``extra`` words as irrelevant."""
    words = [w for w in extra if w.strip() and w.strip() in ex.prompt]
    if words:
        ex = ex.with_marks(irrelevant=(*ex.irrelevant, *words))
    try:
        return ex.with_marks(**{r: tuple(ex.positions(model, r)) for r in _ROLES})
    except InputError as exc:
        raise InputError(f"example {k}: {exc}") from None


def as_labelled(
    items: Iterable[Any], model: Any, *, irrelevant: Sequence[str] | None = None
) -> list[AnnotatedExample]:
    """Normalise examples to :class:`~lmxray.examples.AnnotatedExample` for ``model``'s
    tokenizer, with ``rationale`` and ``irrelevant`` resolved to token positions.

    Args:
        items: zoo ``Item``/``Example`` objects, dicts with ``prompt``, ``target`` (or
            ``label``, then the target is ``" " + label``), optional ``rationale`` and
            ``irrelevant`` (token positions, words, or ``[start, end]`` character spans),
            ``AnnotatedExample`` objects, or ``(prompt, target)`` pairs.
        model: whose tokenizer defines the positions.
        irrelevant: words to mark irrelevant in every prompt where they occur (in addition to
            what the items carry), e.g. ``["Tuesday"]``.
    """
    out = [_resolve(model, _example(e, k), k, irrelevant or ()) for k, e in enumerate(items)]
    if not out:
        raise InputError("no examples given")
    return out


def zoo_labelled(
    task: str, split: str, n: int, seed: int, model: Any, *, negatives: bool = False
) -> list[AnnotatedExample]:
    """``n`` zoo examples of ``task`` as resolved examples, positions in ``model``'s tokens."""
    return as_labelled(generate(task, split, n, seed, negatives=negatives), model)


# --------------------------------------------------------------------------- scoring
def _encode_pairs(model: Any, examples: Sequence[AnnotatedExample]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for e in examples:
        p, t = model.encode(e.prompt), model.encode_target(e.target)
        if not t:
            raise InputError(f"the target {e.target!r} tokenizes to no tokens")
        pairs.append((p, t))
    return pairs


@torch.no_grad()
def target_correct(
    model: Model, examples: Sequence[AnnotatedExample], *, batch_size: int = 64
) -> np.ndarray:
    """``[N]`` bool: the greedy (argmax) continuation equals the target at every target token.

    One teacher-forced forward per batch of left-padded rows, logits only at target positions.
    """
    pairs = _encode_pairs(model, examples)
    out = np.zeros(len(pairs), dtype=bool)
    was = model.hf.training
    model.hf.eval()
    try:
        for a in range(0, len(pairs), batch_size):
            chunk = pairs[a : a + batch_size]
            seqs = [p + t[:-1] for p, t in chunk]
            t_max = max(len(t) for _, t in chunk)
            ids, mask, pos = model.pad_batch(seqs)
            logits = model.forward(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max
            ).logits
            pred = logits.argmax(-1).cpu()
            for r, (_, t) in enumerate(chunk):
                out[a + r] = pred[r, t_max - len(t) :].tolist() == list(t)
    finally:
        if was:
            model.hf.train()
    return out


def label_logprobs(model: Any, prompts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``[N, K]`` log P(label_k | prompt_n), summed over the label's tokens.

    ``model`` is an lmxray :class:`Model` or a black-box model (anything with ``score``, see
    :mod:`lmxray.blackbox`): the rows go through the shared scorer either way.
    """
    if not labels:
        raise InputError("no candidate labels to score")
    lab_ids = [model.encode_target(lab) for lab in labels]
    for lab, ids in zip(labels, lab_ids, strict=True):
        if not ids:
            raise InputError(f"the label {lab!r} tokenizes to no tokens")
    rows = []
    for p in prompts:
        p_ids = model.encode(p)
        for ids in lab_ids:
            model.check_length(len(p_ids) + len(ids))
            rows.append(ScoreRow((p_ids + ids)[:-1], ids))
    vals = score_sequences(model, rows, Context(target_fn=logprob))
    out = np.array([float(np.sum(v)) for v in vals], dtype=np.float64)
    return out.reshape(len(prompts), len(labels))
