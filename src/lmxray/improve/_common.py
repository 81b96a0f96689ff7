"""Shared pieces of the improvement methods: labelled examples, batched accuracy, tables.

Every improver reads the same :class:`Labelled` example: a prompt, the expected target, and
token positions (in ``model.encode(prompt)``, so index 0 is BOS when the tokenizer adds one) of
the *rationale* (what should decide the answer) and of tokens marked *irrelevant* (a shortcut).
:func:`as_labelled` builds them from zoo items (character spans mapped with the model's own
tokenizer, so any model works), zoo ``Example`` objects, dicts (JSONL rows) or
``(prompt, target)`` pairs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..model import Model

__all__ = [
    "Labelled",
    "as_labelled",
    "zoo_labelled",
    "load_jsonl",
    "token_positions",
    "target_correct",
    "label_logprobs",
    "format_table",
]


@dataclass(frozen=True)
class Labelled:
    """A prompt with its expected target and token-level annotations.

    Attributes:
        prompt: model input (the tokenizer adds its special tokens).
        target: expected continuation, with its leading space (``" positive"``).
        rationale: positions of the tokens that should decide the answer.
        irrelevant: positions marked irrelevant (e.g. a detected shortcut).
        label: answer class (default: the stripped target).
        meta: anything else (zoo meta, JSONL extra fields).
    """

    prompt: str
    target: str
    rationale: tuple[int, ...] = ()
    irrelevant: tuple[int, ...] = ()
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> str:
        return self.label if self.label is not None else self.target.strip()


def token_positions(model: Any, prompt: str, spans: Iterable[tuple[int, int]]) -> list[int]:
    """Positions of the tokens of ``model.encode(prompt)`` that overlap any character span."""
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        return []
    enc = model.tokenizer(prompt, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise InputError(
            "this tokenizer gives no character offsets; pass token positions instead of spans"
        )
    specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    out = []
    for i, ((s, e), tid) in enumerate(zip(offsets, enc["input_ids"], strict=True)):
        if tid in specials or e <= s:
            continue
        # byte-level BPE offsets include a word's leading space; spans start at the word itself
        if any(s < b and e > a for a, b in spans):
            out.append(i)
    return out


def _words_to_positions(model: Any, prompt: str, words: Sequence[str]) -> list[int]:
    spans = []
    for w in words:
        w = str(w).strip()
        if not w:
            continue
        start = 0
        found = False
        while True:
            i = prompt.find(w, start)
            if i < 0:
                break
            spans.append((i, i + len(w)))
            start = i + len(w)
            found = True
        if not found:
            raise InputError(f"the word {w!r} does not occur in the prompt {prompt[:60]!r}")
    return token_positions(model, prompt, spans)


def _positions(model: Any, prompt: str, value: Any, name: str) -> tuple[int, ...]:
    """Token positions from ints, or from words/substrings of the prompt."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if not value:
        return ()
    n = len(model.encode(prompt))
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value):
        pos = sorted({int(v) for v in value})
        if pos[0] < 0 or pos[-1] >= n:
            raise InputError(f"{name} positions {pos} do not fit the prompt's {n} tokens")
        return tuple(pos)
    if all(isinstance(v, str) for v in value):
        return tuple(_words_to_positions(model, prompt, value))
    raise InputError(f"{name} must be token positions (ints) or words of the prompt (strings)")


def _get(e: Any, key: str) -> Any:
    return e.get(key) if isinstance(e, dict) else getattr(e, key, None)


def as_labelled(
    items: Iterable[Any], model: Any, *, irrelevant: Sequence[str] | None = None
) -> list[Labelled]:
    """Normalise examples to :class:`Labelled` for ``model``'s tokenizer.

    Args:
        items: zoo ``Item``/``Example`` objects, dicts with ``prompt``, ``target`` (or
            ``label``, then the target is ``" " + label``), optional ``rationale`` and
            ``irrelevant`` (token positions or words), ``Labelled``, or ``(prompt, target)``.
        model: whose tokenizer defines the positions.
        irrelevant: words to mark irrelevant in every prompt where they occur (in addition to
            what the items carry), e.g. ``["Tuesday"]``.
    """
    out: list[Labelled] = []
    for k, e in enumerate(items):
        if isinstance(e, Labelled):
            lab = e
        elif isinstance(e, tuple | list) and len(e) == 2 and all(isinstance(v, str) for v in e):
            lab = Labelled(prompt=e[0], target=e[1])
        elif _get(e, "spans") is not None and _get(e, "prompt") is not None:  # a zoo Item
            lab = _from_spans(model, e)
        elif _get(e, "evidence_spans") is not None:  # a zoo Example: spans, not its indices
            lab = _from_example(model, e)
        else:
            lab = _from_dict(model, e, k)
        if not lab.prompt or not lab.prompt.strip():
            raise InputError(f"example {k} has an empty prompt")
        if not lab.target:
            raise InputError(f"example {k} has an empty target; give target (or label)")
        if irrelevant:
            extra = [w for w in irrelevant if w.strip() and w.strip() in lab.prompt]
            if extra:
                pos = set(lab.irrelevant) | set(_words_to_positions(model, lab.prompt, extra))
                lab = replace(lab, irrelevant=tuple(sorted(pos)))
        out.append(lab)
    if not out:
        raise InputError("no examples given")
    return out


def _from_spans(model: Any, item: Any) -> Labelled:
    spans = list(item.spans)
    rat = [(a, b) for a, b, r in spans if r in ("evidence", "cue")]
    irr = [(a, b) for a, b, r in spans if r == "shortcut"]
    return Labelled(
        prompt=item.prompt,
        target=item.target,
        rationale=tuple(token_positions(model, item.prompt, rat)),
        irrelevant=tuple(token_positions(model, item.prompt, irr)),
        label=item.label,
        meta={"task": item.task, "split": item.split, **dict(item.meta)},
    )


def _from_example(model: Any, e: Any) -> Labelled:
    rat = [*e.evidence_spans, *getattr(e, "cue_spans", ())]
    return Labelled(
        prompt=e.prompt,
        target=e.target,
        rationale=tuple(token_positions(model, e.prompt, rat)),
        irrelevant=tuple(token_positions(model, e.prompt, getattr(e, "shortcut_spans", ()))),
        label=e.label,
        meta={"task": e.task, "split": e.split, **dict(e.meta)},
    )


def _from_dict(model: Any, e: Any, k: int) -> Labelled:
    if not isinstance(e, dict):
        raise InputError(
            f"cannot read example {k} ({type(e).__name__}); give dicts with prompt and target, "
            "zoo examples or (prompt, target) pairs"
        )
    prompt = e.get("prompt")
    target = e.get("target")
    label = e.get("label")
    if target is None and label is not None:
        target = " " + str(label).strip()
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise InputError(f"example {k} needs a 'prompt' string and a 'target' (or 'label') string")
    known = {"prompt", "target", "label", "rationale", "irrelevant"}
    return Labelled(
        prompt=prompt,
        target=target,
        rationale=_positions(model, prompt, e.get("rationale"), "rationale"),
        irrelevant=_positions(model, prompt, e.get("irrelevant"), "irrelevant"),
        label=None if label is None else str(label).strip(),
        meta={k2: v for k2, v in e.items() if k2 not in known},
    )


def zoo_labelled(
    task: str, split: str, n: int, seed: int, model: Any, *, negatives: bool = False
) -> list[Labelled]:
    """``n`` zoo examples of ``task`` as :class:`Labelled`, positions in ``model``'s tokens."""
    from ..zoo import generate

    return as_labelled(generate(task, split, n, seed, negatives=negatives), model)


def load_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file (one JSON object per line; blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no file at {p}; give a JSONL file with one example per line")
    rows = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p} line {i} is not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise InputError(f"{p} line {i} is not a JSON object")
            rows.append(row)
    if not rows:
        raise InputError(f"{p} holds no examples")
    return rows


# --------------------------------------------------------------------------- scoring
def _encode_pairs(model: Any, examples: Sequence[Labelled]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for e in examples:
        p, t = model.encode(e.prompt), model.encode_target(e.target)
        if not t:
            raise InputError(f"the target {e.target!r} tokenizes to no tokens")
        pairs.append((p, t))
    return pairs


@torch.no_grad()
def target_correct(
    model: Model, examples: Sequence[Labelled], *, batch_size: int = 64
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
    from ..attribution._engine import ScoreRow, score_sequences
    from ..attribution.base import Context
    from ..targets import logprob

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


# --------------------------------------------------------------------------- text tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> str:
    """Fixed-width text table (floats with 3 decimals); what the CLI prints and docs quote."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if not np.isfinite(v) else f"{float(v):.3f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
        for i, h in enumerate(headers)
    ]
    lines = [title] if title else []
    lines.append(
        "  ".join(
            str(h).ljust(w) if i == 0 else str(h).rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)
