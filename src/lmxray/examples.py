"""The one annotated-example type and the one rule that maps annotations to token positions.

Every package that reads examples with marked words (``evaluate`` rationales and evidence,
``improve`` rationales and shortcuts, ``zoo`` ground truth, self-explanation tests) builds an
:class:`AnnotatedExample` and asks it for token positions with :meth:`AnnotatedExample.positions`,
so the same annotation marks the same tokens everywhere.

An annotation (one role: ``evidence``, ``rationale``, ``irrelevant``, ``content``) is a tuple of
marks, each one of:

- an ``int``: a token position in ``model.encode(prompt)`` (special tokens included, so 0 is BOS
  when the tokenizer adds one);
- a ``(start, end)`` pair: a character span ``prompt[start:end]``;
- a ``str``: a word or phrase of the prompt, meaning **every** place it occurs (a rationale
  word names the word, not one of its places).

**The span rule** (:func:`spans_to_tokens`): a token is marked when its character range, from
the tokenizer's offsets, overlaps a span (``a < end and start < b``); tokens with an empty range
and special tokens are never marked. It needs a fast tokenizer (offsets) whose ids equal
``model.encode(prompt)``. Of the two rules lmxray had, this keeps the checks of the one in
``evaluate`` (spans inside the prompt, offsets matching the model's encoding) and the special-token
exclusion of the one in ``improve``; a word given as text now marks all its occurrences in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["AnnotatedExample", "Mark", "spans_to_tokens", "text_spans", "ROLES"]

Mark = int | tuple[int, int] | str
ROLES = ("evidence", "rationale", "irrelevant", "content")


def _offsets(model: Any, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = model.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    except NotImplementedError:
        raise InputError(
            "annotations given as text or character spans need a fast tokenizer (offsets); "
            "give token positions instead"
        ) from None
    ids, offsets = list(enc["input_ids"]), enc.get("offset_mapping")
    if offsets is None:
        raise InputError(
            "this tokenizer gives no character offsets; give token positions instead of spans"
        )
    if ids != list(model.encode(prompt)):
        raise InputError(
            "the tokenizer's offsets do not match model.encode(prompt); give token positions"
        )
    return ids, [(int(a), int(b)) for a, b in offsets]


def spans_to_tokens(model: Any, prompt: str, spans: Iterable[tuple[int, int]]) -> list[int]:
    """Positions in ``model.encode(prompt)`` of the tokens overlapping any character span.

    Example:
        >>> spans_to_tokens(m, "The capital of France is", [(15, 21)])  # doctest: +SKIP
        [4]
    """
    spans = [(int(s), int(e)) for s, e in spans]
    for s, e in spans:
        if not 0 <= s < e <= len(prompt):
            raise InputError(
                f"character span [{s}, {e}) is outside the prompt of {len(prompt)} characters"
            )
    if not spans:
        return []
    ids, offsets = _offsets(model, prompt)
    specials = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    return [
        i
        for i, ((a, b), tid) in enumerate(zip(offsets, ids, strict=True))
        if b > a and tid not in specials and any(a < e and s < b for s, e in spans)
    ]


def text_spans(prompt: str, text: str, what: str = "annotation") -> list[tuple[int, int]]:
    """Character spans of every occurrence of ``text`` (stripped) in ``prompt``."""
    word = str(text).strip()
    if not word:
        raise InputError(f"an empty {what} text cannot mark anything; remove it")
    out, start = [], prompt.find(word)
    while start >= 0:
        out.append((start, start + len(word)))
        start = prompt.find(word, start + len(word))
    if not out:
        raise InputError(f"{what} text {word!r} does not occur in the prompt {prompt[:60]!r}")
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _normalise_marks(value: Any, what: str) -> tuple[Mark, ...]:
    """Validate the *form* of one role's marks (positions, spans, words); no model needed."""
    if value is None:
        return ()
    if isinstance(value, str) or _is_int(value):
        value = [value]
    if not isinstance(value, Iterable):
        raise InputError(f"cannot read the {what} {value!r}: give a list of marks")
    out: list[Mark] = []
    for v in value:
        if _is_int(v):
            out.append(int(v))
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, Sequence) and len(v) >= 2 and _is_int(v[0]) and _is_int(v[1]):
            out.append((int(v[0]), int(v[1])))  # a zoo span (start, end, role) keeps start, end
        else:
            raise InputError(
                f"cannot read the {what} mark {v!r}: give token positions, words of the prompt, "
                "or [start, end] character spans"
            )
    return tuple(out)


@dataclass(frozen=True)
class AnnotatedExample:
    """A prompt, what the model should answer, and which parts of the prompt matter.

    Attributes:
        prompt: the model input (the tokenizer adds its special tokens).
        target: the continuation to explain or to train towards (``" Paris"``), or None.
        label: the answer class (default: the stripped target).
        evidence: what decides the answer by construction (ground truth).
        rationale: what a person marked as the reason.
        irrelevant: what must not matter (a planted shortcut, a marker).
        content: tokens whose single deletion must not change the answer (for verification).
        id: a stable identifier.
        verified: whether the evidence was checked to be necessary (None: not checked).
        meta: anything else (zoo meta, extra JSONL fields).

    Example:
        >>> ex = AnnotatedExample("The capital of France is", " Paris", evidence=("France",))
        >>> ex.positions(m, "evidence")  # doctest: +SKIP
        [4]
    """

    prompt: str
    target: str | None = None
    label: str | None = None
    evidence: tuple[Mark, ...] = ()
    rationale: tuple[Mark, ...] = ()
    irrelevant: tuple[Mark, ...] = ()
    content: tuple[Mark, ...] = ()
    id: str | None = None
    verified: bool | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(f"an example needs a non-empty 'prompt' text (got {self.prompt!r})")
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise InputError(f"the 'target' of an example must be non-empty text (got {self.target!r})")
        for role in ROLES:
            object.__setattr__(self, role, _normalise_marks(getattr(self, role), role))

    @property
    def cls(self) -> str:
        """The answer class: ``label``, else the stripped target."""
        if self.label is not None:
            return self.label
        return (self.target or "").strip()

    def positions(self, model: Any, role: str) -> list[int]:
        """Sorted token positions in ``model.encode(prompt)`` that ``role`` marks (the one rule).

        Raises:
            InputError: a position outside the prompt, a span outside it, a word not in it.
        """
        if role not in ROLES:
            raise InputError(f"unknown annotation role {role!r}; use one of {', '.join(ROLES)}")
        marks = getattr(self, role)
        if not marks:
            return []
        ints = [m for m in marks if isinstance(m, int)]
        spans: list[tuple[int, int]] = [m for m in marks if isinstance(m, tuple)]
        for m in marks:
            if isinstance(m, str):
                spans.extend(text_spans(self.prompt, m, role))
        out = set(spans_to_tokens(model, self.prompt, spans)) if spans else set()
        if ints:
            n = len(model.encode(self.prompt))
            bad = [i for i in ints if not 0 <= i < n]
            if bad:
                raise InputError(f"{role} position {bad[0]} is outside the prompt's {n} tokens")
            out.update(ints)
        return sorted(out)

    def with_marks(self, **roles: Any) -> AnnotatedExample:
        """A copy with some roles replaced (``ex.with_marks(rationale=[3, 4])``)."""
        return replace(self, **roles)

    @classmethod
    def from_record(cls, obj: Any, index: int | None = None) -> AnnotatedExample:
        """From a dict (a JSONL row, a dataset row) or an object with those attributes (a zoo
        item). Zoo-style ``spans`` ``[(start, end, role), ...]`` fill the roles they name (a
        role given as its own field wins over spans of that role); ``shortcut`` marks, as a
        field or as spans of role ``shortcut``, are irrelevant (and content: their deletion
        must not matter); spans of other roles (the zoo's ``cue``) mark nothing."""
        if isinstance(obj, AnnotatedExample):
            return obj

        def get(key: str) -> Any:
            return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)

        where = f"example {index}" if index is not None else "an example"
        prompt, target = get("prompt"), get("target")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where} has no 'prompt' text")
        roles: dict[str, list[Any]] = {r: list(_normalise_marks(get(r), r)) for r in ROLES}
        shortcut = list(_normalise_marks(get("shortcut"), "shortcut"))
        roles["irrelevant"] += shortcut
        roles["content"] += shortcut
        for s in get("spans") or ():
            if not (isinstance(s, Sequence) and len(s) >= 3):
                raise InputError(f"{where}: a span must be [start, end, role], got {s!r}")
            role, span = str(s[2]), (int(s[0]), int(s[1]))
            if role == "shortcut" and not shortcut:  # a zoo item's planted feature
                roles["irrelevant"].append(span)
                roles["content"].append(span)
            elif role in ROLES and not _normalise_marks(get(role), role):
                roles[role].append(span)
        ex_id = get("id")
        verified = get("verified")
        label = get("label")
        known = {f.name for f in fields(cls)} | {"spans", "shortcut"}
        meta = dict(get("meta") or {})
        if isinstance(obj, Mapping):
            meta.update({k: v for k, v in obj.items() if k not in known})
        try:
            return cls(
                prompt=prompt, target=target, label=None if label is None else str(label),
                id=None if ex_id is None else str(ex_id),
                verified=None if verified is None else bool(verified), meta=meta,
                **{r: tuple(v) for r, v in roles.items()},
            )
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
