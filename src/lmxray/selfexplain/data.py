"""Multiple-choice items for the self-explanation tests: from a user's JSONL file, from records
(dicts such as :func:`lmxray.zoo.organisms.items` returns), or from a callable that makes them.

JSONL format, one question per line::

    {"question": "Which is a fruit?", "options": ["chair", "apple", "river"], "answer": "B",
     "id": "q1", "context": "optional passage", "meta": {"evidence": "apple"}}

- ``question``: non-empty text; ``options``: 2 to 26 non-empty texts, lettered (A), (B), ... in
  this order; ``answer``: the correct option as a 0-based index (``1``) or a letter (``"B"``,
  ``"(B)"``);
- optional ``id`` (text or number; default ``line-N``), ``context`` (text before the question),
  ``meta`` (an object); any other field is kept in ``meta``.

A line that breaks these rules is a one-line :class:`~lmxray.errors.InputError` naming the file
and the line (through :func:`lmxray.io.iter_jsonl`, which also names non-UTF-8 and non-JSON lines).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import iter_jsonl
from ._types import MCItem

__all__ = ["load_items", "to_items", "item_from_record", "MAX_OPTIONS"]

MAX_OPTIONS = 26
_FIELDS = {"id", "question", "options", "answer", "context", "meta"}


def _answer_index(answer: Any, n_options: int) -> int:
    if isinstance(answer, bool):
        raise ValueError(f"'answer' must be an option index or letter, got {answer!r}")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and len(answer.strip().strip("()").strip()) == 1:
        ch = answer.strip().strip("()").strip().upper()
        if not "A" <= ch <= "Z":
            raise ValueError(f"'answer' {answer!r} is not an option letter")
        index = ord(ch) - 65
    else:
        raise ValueError(f"'answer' must be a 0-based option index or a letter like \"B\", got {answer!r}")
    if not 0 <= index < n_options:
        raise ValueError(f"'answer' {answer!r} is not one of the {n_options} options")
    return index


def item_from_record(record: Any, default_id: str) -> MCItem:
    """An :class:`MCItem` from a dict (or an MCItem, returned as is); ``ValueError`` says what is
    wrong with the record (callers add where it came from)."""
    if isinstance(record, MCItem):
        return record
    if not isinstance(record, Mapping):
        raise ValueError(f"an item must be an object with question/options/answer, got "
                         f"{type(record).__name__}")
    missing = [k for k in ("question", "options", "answer") if k not in record]
    if missing:
        raise ValueError(f"has no {' and no '.join(repr(k) for k in missing)} field; each item "
                         "needs question, options and answer")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty text")
    options = record["options"]
    if (isinstance(options, str) or not isinstance(options, list | tuple)
            or not 2 <= len(options) <= MAX_OPTIONS):
        raise ValueError(f"'options' must be a list of 2 to {MAX_OPTIONS} texts")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError("every option must be a non-empty text")
    ident = record.get("id", default_id)
    if isinstance(ident, bool) or not isinstance(ident, str | int) or not str(ident).strip():
        raise ValueError(f"'id' must be a non-empty text or a number, got {ident!r}")
    context = record.get("context", "") or ""
    if not isinstance(context, str):
        raise ValueError("'context' must be a text")
    meta = record.get("meta", {}) or {}
    if not isinstance(meta, Mapping):
        raise ValueError("'meta' must be an object")
    extra = {k: v for k, v in record.items() if k not in _FIELDS}
    return MCItem(id=str(ident), question=question, options=tuple(options),
                  answer=_answer_index(record["answer"], len(options)), context=context,
                  meta={**extra, **meta})


def _check_ids(items: list[MCItem], where: str) -> list[MCItem]:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            raise InputError(f"{where}: items {seen[it.id] + 1} and {i + 1} share the id "
                             f"{it.id!r}; ids must be unique")
        seen[it.id] = i
    return items


def _check_n(n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be a positive integer, got {n!r}")


def _items(records: Iterable[tuple[str, str, Any]], n: int | None) -> list[MCItem]:
    """Items of ``(default id, where, record)`` triples, the first ``n`` only (the rest is not
    read); a bad record fails as one line naming ``where``."""
    items: list[MCItem] = []
    for item_id, where, rec in records:
        try:
            items.append(item_from_record(rec, item_id))
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None
        if n is not None and len(items) >= n:
            break
    return items


def load_items(path: str | os.PathLike[str], *, n: int | None = None) -> list[MCItem]:
    """The items of a JSONL file (see the module docstring); ``n``: the first ``n`` only."""
    _check_n(n)
    rows = iter_jsonl(path, what="questions JSONL",
                      hint="; give a JSONL file with question, options and answer per line")
    items = _items(((f"line-{line}", f"{path} line {line}", row) for line, row in rows), n)
    if not items:
        raise InputError(f"{path} holds no questions; give one JSON object with question, "
                         "options and answer per line")
    return _check_ids(items, str(path))


def to_items(source: Any, *, n: int | None = None, seed: int = 0) -> list[MCItem]:
    """Items from a JSONL path, MCItems or dicts, or a callable ``(n, seed) -> records`` (e.g.
    :func:`lmxray.zoo.organisms.items`; ``n`` is then required)."""
    _check_n(n)
    if isinstance(source, str | os.PathLike):
        return load_items(Path(source), n=n)
    if callable(source):
        if n is None:
            raise InputError("give n= (how many items) with an item-making function")
        source = source(n, seed)
    if isinstance(source, Mapping) or not isinstance(source, Iterable):
        raise InputError(f"items must be a JSONL path, a list of items or a function; got "
                         f"{type(source).__name__}")
    items = _items(((f"item-{i}", f"item {i}", rec) for i, rec in enumerate(source)), n)
    if not items:
        raise InputError("no items; give at least one question")
    return _check_ids(items, "items")


