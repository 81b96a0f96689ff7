"""The result of a self-explanation run: per-example rows, per-test aggregates with bootstrap 95%
intervals, and verdicts (``lmxray.selfexplain/1``).

Views (terminal table, HTML with each example's explanation next to each test's verdict) are in
:mod:`lmxray.render.selfexplain`; nothing here recomputes on a model.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InputError
from ..io import atomic_write_with, to_jsonable
from ..result import Result

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["SelfExplainReport", "REPORT_FORMAT", "example_verdict", "check_parquet"]

REPORT_FORMAT = "lmxray.selfexplain/1"
# the explanation shown for an example: the first row of these variants, in this order
_SHOWN_VARIANTS = ("full", "unbiased", "original", "cot")


def check_parquet() -> None:
    """Raise a one-line InputError when Parquet cannot be written (no pyarrow)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError("writing Parquet needs pyarrow (pip install pyarrow); use the JSONL "
                         "rows instead") from None


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def example_verdict(test: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """``(verdict, detail)`` of one example in one test, read from its rows: the rows' own
    ``verdict`` when they give one; the bias test: whether the biased answer follows the bias and
    says so; other tests: how many interventions keep the answer (``agree``)."""
    own = [r["verdict"] for r in rows if isinstance(r.get("verdict"), str)]
    if own:
        return own[0], ""
    if rows and all(r.get("parse_failed") for r in rows):
        return "parse failed", "no answer could be read"
    if test == "bias":
        biased = [r for r in rows if r.get("variant") == "biased" and not r.get("parse_failed")]
        if not biased:
            return "n/a", ""
        b = biased[0]
        if b.get("follows_bias"):
            said = b.get("mentions_bias")
            return ("follows bias, says so", "") if said else ("follows bias silently", "")
        return "resists bias", ""
    known = [r for r in rows if r.get("agree") is not None and r.get("variant") != "full"]
    if not known:
        return "n/a", ""
    agree = sum(bool(r["agree"]) for r in known)
    return f"{agree}/{len(known)} agree", "interventions that keep the answer"


@dataclass(repr=False)
class SelfExplainReport(Result):
    """Rows and aggregates of :func:`lmxray.selfexplain.run`.

    Attributes:
        rows: one dict per (test, example, variant): ``test``, ``id``, ``variant``, ``answer``,
            ``reference``, ``agree``, ``parse_failed``, ``explanation`` and test-specific fields.
        aggregates: ``{test: {name: (value, lo, hi)}}`` (bootstrap 95% intervals; counts repeat
            the value).
        flags: ``{test: True (flagged unfaithful) | False | None (no data)}``.
        config: the run's configuration (generator, format, tests, parameters, items).
        info: ``retries`` (endpoint requests repeated), ``parse_failed`` per test, ``seconds``
            per test, ``resumed_rows``.
        path: the JSONL rows file, if any.
    """

    FORMAT: ClassVar[str] = REPORT_FORMAT

    rows: list[dict[str, Any]]
    aggregates: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    flags: dict[str, bool | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "config": self.config, "aggregates": self.aggregates,
                "flags": self.flags, "info": self.info, "rows": self.rows,
                "path": None if self.path is None else str(self.path)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfExplainReport:
        aggs = {
            str(t): {str(k): tuple(_nan(x) for x in v) for k, v in metrics.items()}
            for t, metrics in (data.get("aggregates") or {}).items()
        }
        for metrics in aggs.values():
            for k, v in metrics.items():
                if len(v) != 3:
                    raise ValueError(f"aggregate {k!r} is not (value, lo, hi)")
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("rows must be a list of objects")
        return cls(rows=rows, aggregates=aggs,  # type: ignore[arg-type]
                   flags={str(k): v for k, v in (data.get("flags") or {}).items()},
                   config=dict(data.get("config") or {}), info=dict(data.get("info") or {}),
                   path=Path(data["path"]) if data.get("path") else None)

    # ------------------------------------------------------------------ reading
    @property
    def tests(self) -> list[str]:
        """The tests run, in order."""
        return list(self.config.get("tests") or self.aggregates)

    def verdict(self, test: str) -> str:
        """``"unfaithful"`` (flagged), ``"faithful"`` or ``"n/a"`` (no data)."""
        flag = self.flags.get(test)
        return "n/a" if flag is None else "unfaithful" if flag else "faithful"

    @property
    def verdicts(self) -> dict[str, str]:
        return {t: self.verdict(t) for t in self.tests}

    def headline(self, test: str) -> tuple[str, tuple[float, float, float]] | None:
        """The first aggregate of a test that is not a count: ``(name, (value, lo, hi))``."""
        for name, v in self.aggregates.get(test, {}).items():
            if name not in ("n", "parse_failed") and not name.startswith("n_"):
                return name, v
        return None

    def examples(self) -> list[dict[str, Any]]:
        """Per example: ``id``, ``explanation`` (its own chain or rationale) and, per test,
        ``(verdict, detail)`` (see :func:`example_verdict`), in the rows' order."""
        by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for r in self.rows:
            by[str(r.get("id"))][str(r.get("test"))].append(r)
        out = []
        for ident, tests in by.items():
            rows = [r for t in tests.values() for r in t]
            shown = next((r for v in _SHOWN_VARIANTS for r in rows
                          if r.get("variant") == v and r.get("explanation")), None)
            shown = shown or next((r for r in rows if r.get("explanation")), None)
            out.append({
                "id": ident,
                "explanation": "" if shown is None else str(shown["explanation"]),
                "answer": None if shown is None else shown.get("answer"),
                "reference": None if shown is None else shown.get("reference"),
                "tests": {t: example_verdict(t, tests[t]) for t in self.tests if t in tests},
            })
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (one row per test, example and variant)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def aggregate_frame(self) -> pd.DataFrame:
        """One row per (test, aggregate): ``value``, ``lo``, ``hi``, and the test's verdict."""
        import pandas as pd

        recs = [{"test": t, "name": k, "value": v[0], "lo": v[1], "hi": v[2],
                 "verdict": self.verdict(t)}
                for t, metrics in self.aggregates.items() for k, v in metrics.items()]
        return pd.DataFrame(recs, columns=["test", "name", "value", "lo", "hi", "verdict"])

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """The rows as Parquet (needs pyarrow), written atomically; values that are lists or
        objects are stored as JSON text."""
        check_parquet()
        df = self.to_dataframe()
        for col in df.columns:
            if df[col].map(lambda v: isinstance(v, list | tuple | dict)).any():
                df[col] = df[col].map(lambda v: json.dumps(to_jsonable(v)) if v is not None else None)
        return atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False),
                                 suffix=".tmp.parquet")
