"""Adapters from the zoo's task examples to what the internals functions take.

The zoo (``lmxray.zoo``) generates examples with a prompt, a target and marked spans; these
helpers turn them into facts for causal tracing, labelled prompts for probes, texts for the
tuned lens and prompt/target lists for head ablation, without depending on its internals more
than on ``prompt``, ``target``, ``meta``/``spans`` or ``evidence``.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

__all__ = ["zoo_examples", "facts", "texts"]


def zoo_examples(task: str, split: str = "test", n: int | None = 100, seed: int = 0) -> list[Any]:
    """Raw examples of a zoo task (``lmxray.zoo.generate``: prompt, target, character spans, meta).

    Character spans rather than the zoo tokenizer's token indices, so that any model's own
    tokenizer can locate the subject.
    """
    try:
        from lmxray import zoo
    except ImportError:  # pragma: no cover - the zoo ships with the package
        raise InputError("the zoo is not available in this installation") from None
    return list(zoo.generate(task, split, n, seed))


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


def facts(n: int | None = 100, seed: int = 0, relation: str | None = None, split: str = "test") -> list[dict[str, Any]]:
    """Zoo ``facts`` examples as dicts: prompt, subject, answer, continent (or None), relation."""
    out = []
    for e in zoo_examples("facts", split, None if relation else n, seed):
        meta = _get(e, "meta") or {}
        if relation is not None and meta.get("relation") != relation:
            continue
        out.append({"prompt": _get(e, "prompt"), "subject": subject_of(e), "answer": _get(e, "target"),
                    "continent": meta.get("continent"), "relation": meta.get("relation"),
                    "subject_text": meta.get("subject")})
    return out[:n] if n is not None else out


def texts(tasks: list[str] | None = None, n: int = 200, split: str = "train", seed: int = 0) -> list[str]:
    """Zoo text for training a tuned lens: ``zoo.corpus`` (mixed tasks, prompt + answer), or the
    full texts of the given tasks' examples."""
    if not tasks:
        import lmxray.zoo as zoo

        return list(zoo.corpus(split, n=n, seed=seed))
    out: list[str] = []
    for t in tasks:
        for e in zoo_examples(t, split, n, seed):
            out.append(str(_get(e, "prompt")) + str(_get(e, "target")))
    return out
