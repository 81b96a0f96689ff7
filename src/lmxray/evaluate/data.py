"""Examples to evaluate on: zoo tasks, JSONL files, Hugging Face ``datasets`` folders, or
Python objects, normalised to :class:`Example` with rationale/evidence as prompt token indices.

Accepted fields (dicts, objects, JSONL records, dataset rows):

- ``prompt`` (required) and ``target`` (required: the continuation to explain);
- ``rationale``: human rationale, as prompt token indices (positions of ``model.encode(prompt)``,
  special tokens included), as substrings of the prompt, or as ``[start, end]`` character spans;
- ``evidence``: ground-truth evidence, same forms; ``content``: tokens whose single deletion must
  not change the answer (for :func:`~lmxray.evaluate.groundtruth.verify_evidence`);
- ``spans``: zoo-style ``(start, end, role)`` character spans (roles ``evidence``, ``content``...);
- ``shortcut``: a planted spurious feature (treated as content for verification);
- ``verified``: whether the evidence was checked to be necessary (else the runner checks);
- ``id``: a stable identifier (default: the example's index).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["Example", "load_examples", "to_examples", "char_spans_to_tokens"]


@dataclass
class Example:
    """One example, tokenisation-resolved: indices are prompt token positions."""

    id: str
    prompt: str
    target: str
    rationale: list[int] | None = None
    evidence: list[int] | None = None
    content: list[int] | None = None
    verified: bool | None = None


def char_spans_to_tokens(model: Model, prompt: str, spans: Iterable[tuple[int, int]]) -> list[int]:
    """Prompt token positions whose characters overlap any ``(start, end)`` character span."""
    spans = [(int(s), int(e)) for s, e in spans]
    for s, e in spans:
        if not 0 <= s < e <= len(prompt):
            raise InputError(f"character span [{s}, {e}) is outside the prompt of {len(prompt)} characters")
    try:
        enc = model.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    except NotImplementedError:
        raise InputError(
            "rationales given as text need a fast tokenizer (offsets); give token indices instead"
        ) from None
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if list(ids) != model.encode(prompt):
        raise InputError("the tokenizer's offsets do not match model.encode(prompt); give token indices")
    out = []
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < e and s < b for s, e in spans):
            out.append(i)
    return out


def _resolve_tokens(model: Model, prompt: str, value: Any, what: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if not value:
        return []
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        n = len(model.encode(prompt))
        bad = [v for v in value if not 0 <= v < n]
        if bad:
            raise InputError(f"{what} index {bad[0]} is outside the prompt's {n} tokens")
        return sorted(set(value))
    spans: list[tuple[int, int]] = []
    for v in value:
        if isinstance(v, str):
            start = prompt.find(v)
            if not v or start < 0:
                raise InputError(f"{what} text {v!r} does not occur in the prompt {prompt!r}")
            spans.append((start, start + len(v)))
        elif isinstance(v, Sequence) and len(v) >= 2 and all(isinstance(x, int) for x in v[:2]):
            spans.append((int(v[0]), int(v[1])))
        else:
            raise InputError(
                f"cannot read the {what} {v!r}: give token indices, substrings of the prompt, "
                "or [start, end] character spans"
            )
    return char_spans_to_tokens(model, prompt, spans)


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def to_examples(model: Model, items: Iterable[Any]) -> list[Example]:
    """Normalise dicts / objects (zoo items, dataset rows) to :class:`Example`."""
    out: list[Example] = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
            continue
        prompt, target = _get(item, "prompt"), _get(item, "target")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"example {i} has no 'prompt' text")
        if not isinstance(target, str) or not target:
            raise InputError(f"example {i} has no 'target' text: give the continuation to explain")
        ex_id = _get(item, "id")
        rationale = _resolve_tokens(model, prompt, _get(item, "rationale"), "rationale")
        evidence = _resolve_tokens(model, prompt, _get(item, "evidence"), "evidence")
        content = _resolve_tokens(model, prompt, _get(item, "content"), "content")
        shortcut = _resolve_tokens(model, prompt, _get(item, "shortcut"), "shortcut")
        if shortcut:  # a planted shortcut's single deletion must not change the answer either
            content = sorted(set(content or []) | set(shortcut))
        spans = _get(item, "spans")
        if spans:
            by_role: dict[str, list[tuple[int, int]]] = {}
            for s in spans:
                by_role.setdefault(str(s[2]), []).append((int(s[0]), int(s[1])))
            if evidence is None and "evidence" in by_role:
                evidence = char_spans_to_tokens(model, prompt, by_role["evidence"])
            if content is None:
                content = char_spans_to_tokens(model, prompt, by_role.get("content", []))
        verified = _get(item, "verified")
        out.append(Example(
            id=str(ex_id) if ex_id is not None else str(i), prompt=prompt, target=target,
            rationale=rationale, evidence=evidence, content=content,
            verified=None if verified is None else bool(verified),
        ))
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise InputError(f"example id {dup!r} occurs twice; ids must be unique")
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{n} is not a JSON object with prompt/target fields")
            rows.append(rec)
    if not rows:
        raise InputError(f"{path} holds no examples")
    return rows


def _read_datasets_folder(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{path} looks like a Hugging Face datasets folder; reading it needs the 'datasets' "
            "package (pip install datasets)"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{path} has splits {', '.join(ds)}, not {split!r}; pass --split")
        ds = ds[split]
    return [dict(r) for r in ds]


def load_examples(
    model: Model, source: Any, *, n: int | None = None, split: str = "test", seed: int = 0
) -> tuple[list[Example], str]:
    """Examples and a short name for ``source``: a zoo task name, a ``.jsonl`` file, a
    ``datasets`` folder saved with ``save_to_disk``, or an iterable of examples."""
    if n is not None and n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if not isinstance(source, str | os.PathLike):
        items = list(source)
        return to_examples(model, items[:n] if n else items), "examples"
    path = Path(source)
    if path.is_file():
        items = _read_jsonl(path)
        name = path.stem
    elif path.is_dir():
        items = _read_datasets_folder(path, split)
        name = path.name
    else:
        from .. import zoo

        if str(source) not in zoo.TASKS:
            raise InputError(
                f"{source!r} is neither a file, a datasets folder nor a zoo task "
                f"({', '.join(zoo.TASKS)})"
            )
        # the zoo locates each role's tokens with this model's tokenizer; the runner verifies
        # the ground truth on this model
        items = zoo.generate(str(source), split, n if n else 100, seed)
        return to_examples(model, zoo.to_examples(items, model.tokenizer)), str(source)
    return to_examples(model, items[:n] if n else items), name
