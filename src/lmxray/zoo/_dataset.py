"""``Example``: a generated item tokenized with a zoo tokenizer, ground truth as token indices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmxray.examples import spans_to_tokens
from lmxray.zoo.tasks import ROLES, Item

__all__ = ["Example", "to_example", "to_examples"]

Span = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """A zoo example with its ground truth.

    Token indices point into the *source tokens* ``tokenizer(prompt)["input_ids"]`` of the
    zoo tokenizer, so index 0 is ``<bos>``; spans are ``(start, end)`` characters of
    ``prompt`` (``prompt[start:end]`` is the word, without its leading space).

    Attributes:
        task, split: origin (``split`` is ``train``, ``test`` or, for sentiment, ``shift``).
        prompt: model input text (without BOS; the tokenizer adds it).
        target: expected continuation, with its leading space.
        tokens: the source tokens as text (``tokens[i]`` decodes ``input_ids[i]``).
        evidence, evidence_spans: the tokens that determine the answer.
        cue, cue_spans: tokens that say what is asked (relation words, queried key, ...).
        shortcut, shortcut_spans: the planted spurious feature (sentiment marker), if any.
        content: the other content tokens (single deletions must not change the answer).
        label: answer class (e.g. ``"positive"``); meta: task details (``continent``, ...).
        verified: ``True`` when the model confirms the ground truth (see ``zoo.verify``),
            ``False`` when it does not, ``None`` when not checked.
    """

    task: str
    split: str
    prompt: str
    target: str
    tokens: tuple[str, ...]
    evidence: tuple[int, ...]
    evidence_spans: tuple[Span, ...]
    cue: tuple[int, ...] = ()
    cue_spans: tuple[Span, ...] = ()
    shortcut: tuple[int, ...] = ()
    shortcut_spans: tuple[Span, ...] = ()
    content: tuple[int, ...] = ()
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    verified: bool | None = None

    @property
    def noncontent(self) -> tuple[int, ...]:
        """Indices of BOS, punctuation, template words and cue tokens."""
        used = set(self.evidence) | set(self.shortcut) | set(self.content)
        return tuple(i for i in range(len(self.tokens)) if i not in used)


class _TokenizerView:
    """What the span rule asks of a model (``tokenizer`` and ``encode``), for a bare tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])


def to_example(item: Item, tokenizer: Any) -> Example:
    """Tokenize ``item`` and map its role spans to source-token indices with the one span rule
    (:func:`lmxray.examples.spans_to_tokens`: every token overlapping a span, special tokens
    never)."""
    view = _TokenizerView(tokenizer)
    ids = view.encode(item.prompt)
    spans: dict[str, list[Span]] = {role: [] for role in ROLES}
    for a, b, role in item.spans:
        spans[role].append((a, b))
    roles = {role: tuple(spans_to_tokens(view, item.prompt, sp)) for role, sp in spans.items()}
    return Example(
        task=item.task,
        split=item.split,
        prompt=item.prompt,
        target=item.target,
        tokens=tuple(tokenizer.decode([t]) for t in ids),
        evidence=roles["evidence"],
        evidence_spans=tuple(spans["evidence"]),
        cue=roles["cue"],
        cue_spans=tuple(spans["cue"]),
        shortcut=roles["shortcut"],
        shortcut_spans=tuple(spans["shortcut"]),
        content=roles["content"],
        label=item.label,
        meta=dict(item.meta),
    )


def to_examples(items: Sequence[Item], tokenizer: Any) -> list[Example]:
    """:func:`to_example` of each item."""
    return [to_example(it, tokenizer) for it in items]
