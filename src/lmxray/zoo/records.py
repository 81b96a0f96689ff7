"""The zoo's tasks as the plain records other packages take (one home for each adapter)."""

from __future__ import annotations

from typing import Any

from ..internals.data import fact_records
from .tasks import generate

__all__ = ["facts"]


def facts(n: int | None = 100, seed: int = 0, relation: str | None = None,
          split: str = "test") -> list[dict[str, Any]]:
    """``n`` zoo facts (all of them with ``None``; only ``relation``'s when given) as records:
    prompt, subject, answer, continent, relation, subject_text
    (:func:`lmxray.internals.fact_records`).

    Example:
        >>> from lmxray.zoo.records import facts
        >>> facts(2)[0]["prompt"]  # doctest: +SKIP
    """
    return fact_records(generate("facts", split, None if relation else n, seed), n=n,
                        relation=relation)
