"""Adapters from task examples (the zoo's, or your own) to what the internals functions take.

Pure functions over examples that carry a ``prompt``, a ``target``, and ``meta`` / ``spans`` /
``evidence`` (zoo examples, dicts or :class:`lmxray.examples.AnnotatedExample`): facts for
causal tracing and probes, texts for the tuned lens, prompt/target lists for head ablation.
They never import :mod:`lmxray.zoo` (a higher layer): the caller generates the examples, e.g.

>>> from lmxray import zoo                                                # doctest: +SKIP
>>> from lmxray.internals import fact_records
>>> facts = fact_records(zoo.generate("facts", "test", None, 0), n=100)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import InputError

__all__ = ["fact_records", "subject_of", "example_texts", "prompts_and_targets"]


def _get(e: Any, key: str) -> Any:
    return e.get(key) if isinstance(e, dict) else getattr(e, key, None)


def subject_of(e: Any) -> Any:
    """The subject of a fact example: its text (``meta['subject']`` or the evidence span), else
    evidence token positions."""
    meta = _get(e, "meta") or {}
    if isinstance(meta, dict) and meta.get("subject"):
        return str(meta["subject"])
    for start, end, role in _get(e, "spans") or ():
        if role == "evidence":
            return str(_get(e, "prompt"))[start:end]
    ev = _get(e, "evidence")
    if isinstance(ev, list | tuple) and ev and all(isinstance(v, int) for v in ev):
        return sorted(int(v) for v in ev)
    raise InputError("a facts example carries no subject (meta['subject'], an evidence span or positions)")


def fact_records(examples: Iterable[Any], n: int | None = None,
                 relation: str | None = None) -> list[dict[str, Any]]:
    """Fact examples as dicts: prompt, subject, answer, continent (or None), relation,
    subject_text; only those of ``relation`` when given, at most ``n``.

    The zoo's facts: ``fact_records(zoo.generate("facts", split, None if relation else n,
    seed), n=n, relation=relation)``.
    """
    out = []
    for e in examples:
        meta = _get(e, "meta") or {}
        if relation is not None and meta.get("relation") != relation:
            continue
        out.append({"prompt": _get(e, "prompt"), "subject": subject_of(e), "answer": _get(e, "target"),
                    "continent": meta.get("continent"), "relation": meta.get("relation"),
                    "subject_text": meta.get("subject")})
        if n is not None and len(out) >= n:
            break
    return out


def example_texts(examples: Iterable[Any]) -> list[str]:
    """Full texts (prompt + target) of examples, e.g. to train a tuned lens on a task."""
    return [str(_get(e, "prompt")) + str(_get(e, "target") or "") for e in examples]


def prompts_and_targets(examples: Iterable[Any]) -> tuple[list[str], list[str]]:
    """``(prompts, targets)`` of examples, e.g. for :func:`lmxray.internals.ablate_heads`."""
    ex = list(examples)
    return [str(_get(e, "prompt")) for e in ex], [str(_get(e, "target")) for e in ex]
