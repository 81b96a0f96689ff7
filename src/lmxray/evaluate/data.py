"""Examples to evaluate on: zoo tasks, JSONL files, Hugging Face ``datasets`` folders, or
Python objects. Each is read as the one annotated-example type
(:class:`lmxray.examples.AnnotatedExample`, :meth:`~lmxray.examples.AnnotatedExample.from_record`)
and resolved for the model with its one span rule
(:meth:`~lmxray.examples.AnnotatedExample.positions`) into an :class:`Example`, whose
rationale / evidence / content are prompt token positions.

Accepted fields (dicts, objects, JSONL records, dataset rows):

- ``prompt`` (required) and ``target`` (required: the continuation to explain);
- ``rationale``: human rationale, as prompt token positions (of ``model.encode(prompt)``,
  special tokens included), as words of the prompt (every occurrence), or as ``[start, end]``
  character spans (every token overlapping the span; special tokens never);
- ``evidence``: ground-truth evidence, same forms; ``content``: tokens whose single deletion must
  not change the answer (for :func:`~lmxray.evaluate.groundtruth.verify_evidence`);
- ``spans``: zoo-style ``(start, end, role)`` character spans (roles ``evidence``, ``content``,
  ``shortcut``);
- ``shortcut``: a planted spurious feature (treated as content for verification);
- ``verified``: whether the evidence was checked to be necessary (else the runner checks);
- ``id``: a stable identifier (default: the example's index).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import zoo
from ..errors import InputError
from ..examples import AnnotatedExample
from ..io import read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["Example", "load_examples", "to_examples", "resolve"]

_JSONL_HINT = "; give one JSON object per line with 'prompt' and 'target' fields"


@dataclass
class Example:
    """One example resolved for a model: rationale, evidence and content are prompt token
    positions (of ``model.encode(prompt)``), computed by
    :meth:`AnnotatedExample.positions <lmxray.examples.AnnotatedExample.positions>`.

    ``content=None`` means "not given": verification then deletes every other non-special token
    one at a time; an empty list deletes none.
    """

    id: str
    prompt: str
    target: str
    rationale: list[int] | None = None
    evidence: list[int] | None = None
    content: list[int] | None = None
    verified: bool | None = None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _content_given(item: Any) -> bool:
    """Whether a record says what its content tokens are (even none): a ``content`` or
    ``shortcut`` field, or zoo ``spans``. An :class:`AnnotatedExample` gives content only when
    it marks some."""
    if isinstance(item, AnnotatedExample):
        return bool(item.content)
    return any(_get(item, k) is not None for k in ("content", "shortcut", "spans"))


def resolve(model: Model, ex: AnnotatedExample, *, ex_id: str, content_given: bool = True) -> Example:
    """The token-level view of one annotated example for ``model``."""
    if ex.target is None:
        raise InputError(f"example {ex_id} has no 'target' text: give the continuation to explain")
    try:
        rationale = ex.positions(model, "rationale") if ex.rationale else None
        evidence = ex.positions(model, "evidence") if ex.evidence else None
        content = ex.positions(model, "content") if ex.content or content_given else None
    except InputError as exc:
        raise InputError(f"example {ex_id}: {exc}") from None
    return Example(id=ex_id, prompt=ex.prompt, target=ex.target, rationale=rationale,
                   evidence=evidence, content=content, verified=ex.verified)


def to_examples(model: Model, items: Iterable[Any]) -> list[Example]:
    """Normalise dicts / objects (zoo items and examples, dataset rows, annotated examples) to
    :class:`Example` for ``model``."""
    out: list[Example] = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
            continue
        ex = AnnotatedExample.from_record(item, i)
        out.append(resolve(model, ex, ex_id=ex.id if ex.id is not None else str(i),
                           content_given=_content_given(item)))
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise InputError(f"example id {dup!r} occurs twice; ids must be unique")
    return out


def _read_datasets_folder(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{path} looks like a Hugging Face datasets folder; reading it needs the 'datasets' "
            "package (pip install datasets)"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(
            f"{path} is a folder but not a datasets folder saved with save_to_disk "
            f"({' '.join(str(exc).split())[:120]}); give a JSONL file or a zoo task"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{path} has splits {', '.join(ds)}, not {split!r}; pass --split")
        ds = ds[split]
    return [dict(r) for r in ds]


def _first(items: list[Any], n: int | None, name: str) -> list[Any]:
    """The first ``n`` items; asking for more than there are is an error, not a silent cap."""
    if n is not None and n > len(items):
        raise InputError(
            f"n={n} is more than the {len(items)} examples of {name}; give n of at most {len(items)}"
        )
    return items[:n] if n else items


def check_source(source: str | os.PathLike[str]) -> str:
    """The short name of a data source (file stem, folder name, zoo task), checked to exist."""
    path = Path(source)
    if path.exists():
        return path.stem if path.is_file() else path.name
    if str(source) not in zoo.TASKS:
        raise InputError(
            f"{str(source)!r} is neither a file, a datasets folder nor a zoo task "
            f"({', '.join(zoo.TASKS)})"
        )
    return str(source)


def load_examples(
    model: Model, source: Any, *, n: int | None = None, split: str = "test", seed: int = 0
) -> tuple[list[Example], str]:
    """Examples and a short name for ``source``: a zoo task name, a ``.jsonl`` file, a
    ``datasets`` folder saved with ``save_to_disk``, or an iterable of examples.

    Raises:
        InputError: a bad source, unreadable file (not UTF-8, not JSON: the line is named), an
            example that does not fit the model, or ``n`` above the examples available.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not isinstance(source, str | os.PathLike):
        return to_examples(model, _first(list(source), n, "the given examples")), "examples"
    name = check_source(source)
    path = Path(source)
    if path.is_file():
        items = read_jsonl(path, what="examples JSONL", hint=_JSONL_HINT)
    elif path.is_dir():
        items = _read_datasets_folder(path, split)
    else:
        # the span rule locates each role's tokens with this model's tokenizer; the runner
        # verifies the ground truth on this model
        items = zoo.generate(name, split, n if n else 100, seed)
    return to_examples(model, _first(items, n, name)), name
