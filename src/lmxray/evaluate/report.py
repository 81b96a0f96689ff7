"""The result of a benchmark run (:class:`Evaluation`, the rows) and its summary
(:class:`Leaderboard`, one line of means per method), both :class:`~lmxray.result.Result` types.

Views (terminal table readable at 80 columns, self-contained HTML, PNG plots) live in
:mod:`lmxray.render.evaluate`; CSV and Parquet are tables of the data and stay here.
Everything here reads the rows the runner computed; nothing is recomputed.

Files:

- the rows file (``lmxray.evaluate/1``): JSONL, a header line ``{"kind": "header", "format":
  "lmxray.evaluate/1", "config": {...}}``, then one ``{"kind": "row", ...}`` per (example, method)
  and one ``{"kind": "sanity", ...}`` per method; written by the runner as it goes, read by
  :meth:`Evaluation.load` (a torn last line, from a crash mid-write, is left out);
- the leaderboard (``lmxray.leaderboard/1``): JSON, what ``lmxray evaluate --json`` writes and
  :meth:`Evaluation.to_json` returns; :meth:`Leaderboard.load` reads it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import FormatError, InputError
from ..io import atomic_write_bytes, atomic_write_text, dumps, to_jsonable
from ..result import Result

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Evaluation", "Leaderboard", "METRIC_INFO", "RESULTS_FORMAT", "LEADERBOARD_FORMAT",
           "read_results", "best_methods"]

RESULTS_FORMAT = "lmxray.evaluate/1"
LEADERBOARD_FORMAT = "lmxray.leaderboard/1"

# name -> (higher is better, short description); the leaderboard's columns, in order
METRIC_INFO: dict[str, tuple[bool, str]] = {
    "comprehensiveness": (True, "AOPC drop of p(target) when the top-k% tokens are removed"),
    "sufficiency": (False, "AOPC drop of p(target) when only the top-k% tokens are kept"),
    "deletion_auc": (False, "area under p(target) as top tokens are deleted"),
    "insertion_auc": (True, "area under p(target) as top tokens are inserted"),
    "decision_flip": (True, "share of top-1 predictions lost by removing the top token"),
    "flip_rank": (True, "rank of the target after removing the top token"),
    "log_odds": (False, "change of log-odds of the target, top-k% removed (AOPC)"),
    "token_f1": (True, "token F1 of the top-k against the rationale"),
    "iou_f1": (True, "ERASER partial-match F1 (IOU >= 0.5)"),
    "auprc": (True, "area under precision-recall of the scores vs the rationale"),
    "roc_auc": (True, "ROC-AUC of the scores vs the rationale"),
    "top1_hit": (True, "top-ranked token is evidence (verified examples)"),
    "topk_hit": (True, "share of the top-|evidence| tokens that are evidence"),
    "mrr": (True, "mean reciprocal rank of the first evidence token"),
    "sanity_rho": (False, "Spearman rho after full cascading randomisation"),
    "verdict_faithful": (True, "share of explanations verified faithful (p <= alpha vs random)"),
    "verdict_stable": (True, "share verified stable under output-preserving perturbations"),
    "verdict_passed": (True, "share whose whole verification verdict passed"),
}
GROUNDTRUTH_COLUMNS = ("top1_hit", "topk_hit", "mrr", "evidence_rank")
_NON_METRIC = {"kind", "example", "method", "verified", "deletion_curve", "insertion_curve"}


def read_results(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of a rows file and the byte length of its complete lines.

    A last line without its newline (torn by a crash mid-write) is left out; any other line
    that is not UTF-8 JSON is an error naming the line.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give an lmxray evaluate results file (JSONL)")
    if not path.is_file():
        raise InputError(f"no such results file: {path}")
    records: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break  # torn write: dropped (and rewritten by a resumed run)
            try:
                rec = json.loads(raw.decode("utf-8"))
            except ValueError as exc:  # not UTF-8, or not JSON
                rec = exc
            if n == 1 and not (isinstance(rec, dict) and rec.get("kind") == "header"):
                raise InputError(f"{path} is not an lmxray evaluate results file (its first line "
                                 "is no results header); choose another --out")
            if isinstance(rec, ValueError):
                raise InputError(f"{path} line {n} is not UTF-8 JSON; the results file is "
                                 "damaged: remove that line or start over with --no-resume")
            if not isinstance(rec, dict):
                raise InputError(f"{path} line {n} is not a JSON object")
            records.append(rec)
            good += len(raw)
    if not records or records[0].get("kind") != "header" or records[0].get("format") != RESULTS_FORMAT:
        raise InputError(f"{path} is not an lmxray evaluate results file; choose another --out")
    return records, good


def best_methods(board: Any, cols: list[str]) -> dict[str, Any]:
    """Per column, the method with the best value (max or min as :data:`METRIC_INFO` says)."""
    out = {}
    for c in cols:
        vals = board[c].astype(float)
        if vals.notna().any():
            out[c] = vals.idxmax() if METRIC_INFO[c][0] else vals.idxmin()
    return out


@dataclass(repr=False)
class Leaderboard(Result):
    """Per method, the mean of every metric (``lmxray.leaderboard/1``, what ``--json`` writes).

    Attributes:
        config: the run's configuration (model, data, methods, parameters).
        leaderboard: ``{method: {"n": ..., metric: mean, ..., "n_verified", "sanity_rho",
            "sanity_passed"}}``; a missing value is None.
        sanity: per method, the cascading randomisation record.

    Example:
        >>> board = Leaderboard.load("leaderboard.json")  # doctest: +SKIP
        >>> board.show()  # doctest: +SKIP
    """

    FORMAT: ClassVar[str] = LEADERBOARD_FORMAT

    config: dict[str, Any] = field(default_factory=dict)
    leaderboard: dict[str, dict[str, Any]] = field(default_factory=dict)
    sanity: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "config": self.config, "leaderboard": self.leaderboard,
                "sanity": self.sanity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Leaderboard:
        board = data["leaderboard"]
        if not isinstance(board, dict) or not all(isinstance(v, dict) for v in board.values()):
            raise ValueError("'leaderboard' must map each method to its metrics")
        return cls(config=dict(data.get("config") or {}), leaderboard=board,
                   sanity=list(data.get("sanity") or []))

    def to_dataframe(self) -> pd.DataFrame:
        """One row per method (index), one column per value; None as NaN."""
        import pandas as pd

        recs = [{"method": m, **{k: (np.nan if v is None else v) for k, v in rec.items()}}
                for m, rec in self.leaderboard.items()]
        board = pd.DataFrame.from_records(recs)
        return board.set_index("method") if not board.empty else board

    def display_columns(self) -> list[str]:
        """The metric columns that hold a value, in :data:`METRIC_INFO` order."""
        board = self.to_dataframe()
        return [c for c in METRIC_INFO if c in board.columns
                and board[c].astype(float).notna().any()]

    def __repr__(self) -> str:
        return f"Leaderboard(data={self.config.get('data')!r}, methods={list(self.leaderboard)!r})"


@dataclass(repr=False)
class Evaluation(Result):
    """Rows of a benchmark run (one per example and method) and the sanity checks.

    Attributes:
        rows: per (example, method) dicts of metric values (and mean curves).
        sanity: per method, the cascading randomisation result.
        config: the run's configuration (model, data, methods, parameters).
        path: the JSONL results file, if any.

    Example:
        >>> ev = Evaluation.load("evaluate-facts.jsonl")  # doctest: +SKIP
        >>> ev.show(); ev.leaderboard()  # doctest: +SKIP
    """

    FORMAT: ClassVar[str] = RESULTS_FORMAT

    rows: list[dict[str, Any]]
    sanity: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "config": self.config, "rows": self.rows,
                "sanity": self.sanity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(rows=list(data["rows"]), sanity=list(data.get("sanity") or []),
                   config=dict(data.get("config") or {}))

    def to_jsonl(self) -> str:
        """The rows file's text: the header line, then the rows and the sanity records."""
        header = {"kind": "header", "format": self.FORMAT, "config": self.config}
        lines = [header, *({"kind": "row", **r} for r in self.rows),
                 *({"kind": "sanity", **s} for s in self.sanity)]
        return "".join(dumps(rec) + "\n" for rec in lines)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows file (JSONL, as the runner writes it), atomically."""
        return atomic_write_text(path, self.to_jsonl())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Evaluation:
        """Read a results file written by the runner (plain JSON lines; a torn last line is
        ignored), e.g. to render the leaderboard of a finished or interrupted run."""
        try:
            records, _ = read_results(path)
        except InputError as exc:
            raise FormatError(str(exc)) from None
        rows = [r for r in records[1:] if r.get("kind") == "row"]
        sanity = [r for r in records[1:] if r.get("kind") == "sanity"]
        return cls(rows=rows, sanity=sanity, config=records[0].get("config", {}), path=Path(path))

    def to_json(self, indent: int | None = 1) -> str:
        """The leaderboard as JSON (``lmxray.leaderboard/1``: what ``lmxray evaluate --json``
        writes; the rows are in the JSONL file, see :meth:`save`)."""
        return self.board().to_json(indent=indent)

    # ------------------------------------------------------------------ tables
    @property
    def methods(self) -> list[str]:
        order = list(self.config.get("methods", []))
        seen = [r["method"] for r in self.rows]
        return order + [m for m in dict.fromkeys(seen) if m not in order]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (example, method); scalar metrics as columns (curves left out)."""
        import pandas as pd

        recs = [{k: (np.nan if v is None else v) for k, v in r.items()
                 if k not in ("kind", "deletion_curve", "insertion_curve")} for r in self.rows]
        df = pd.DataFrame.from_records(recs)
        if df.empty:
            return pd.DataFrame(columns=["example", "method"])
        return df.sort_values(["method", "example"], kind="stable").reset_index(drop=True)

    def _method_record(self, m: str, sub: Any) -> dict[str, Any]:
        import pandas as pd

        rec: dict[str, Any] = {"method": m, "n": len(sub)}
        for c in [c for c in sub.columns if c not in _NON_METRIC]:
            col = sub[c]
            if c in GROUNDTRUTH_COLUMNS and "verified" in sub.columns:
                col = col[sub["verified"].map(lambda v: v is not False and v == v and bool(v))]
            vals = pd.to_numeric(col, errors="coerce")
            rec[c] = float(vals.mean()) if vals.notna().any() else np.nan
        if "verified" in sub.columns:
            rec["n_verified"] = int(sub["verified"].map(lambda v: v is True or v == 1.0).sum())
        san = next((s for s in self.sanity if s["method"] == m), None)
        if san is not None:
            rec["sanity_rho"] = np.nan if san.get("final") is None else float(san["final"])
            rec["sanity_passed"] = san.get("passed")
        return rec

    def leaderboard(self) -> pd.DataFrame:
        """Per method: the mean of every metric (ground truth over verified examples only),
        ``n`` examples, ``n_verified``, and the sanity check's final rho and verdict."""
        import pandas as pd

        df = self.to_dataframe()
        out = [self._method_record(m, df[df["method"] == m] if not df.empty else df)
               for m in self.methods]
        board = pd.DataFrame.from_records(out)
        return board.set_index("method") if not board.empty else board

    def board(self) -> Leaderboard:
        """The leaderboard as a result (``save``, ``show``, ``to_json``)."""
        table = self.leaderboard()
        rows = {str(m): dict(rec.items()) for m, rec in table.iterrows()}
        return Leaderboard(config=self.config, leaderboard=to_jsonable(rows), sanity=self.sanity)

    def curves(self, which: str = "deletion") -> dict[str, np.ndarray]:
        """Mean ``which`` (deletion | insertion) curve per method, over its examples."""
        key = f"{which}_curve"
        out = {}
        for m in self.methods:
            cs = [np.asarray([np.nan if v is None else v for v in r[key]], dtype=float)
                  for r in self.rows if r["method"] == m and r.get(key) is not None]
            if cs and len({len(c) for c in cs}) == 1:
                with np.errstate(all="ignore"):
                    out[m] = np.nanmean(np.stack(cs), axis=0)
        return out

    def display_columns(self) -> list[str]:
        """The metric columns that hold a value, in :data:`METRIC_INFO` order."""
        board = self.leaderboard()
        return [c for c in METRIC_INFO if c in board.columns and board[c].notna().any()]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The leaderboard as CSV (all metric columns); written atomically to ``path`` if given."""
        text = self.leaderboard().to_csv(float_format="%.6g")
        if path is not None:
            atomic_write_text(path, text)
        return text

    def parquet_bytes(self) -> bytes:
        """Per-example rows as Parquet (needs pyarrow)."""
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("writing Parquet needs pyarrow (pip install pyarrow); use the JSONL results") from None
        buf = io.BytesIO()
        self.to_dataframe().to_parquet(buf, index=False)
        return buf.getvalue()

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Per-example rows as Parquet (needs pyarrow), written atomically."""
        return atomic_write_bytes(path, self.parquet_bytes())

    def png_bytes(self, dpi: int = 110) -> bytes:
        """The PNG figure (same as ``to_png()``)."""
        return self.to_png(dpi=dpi)

    def __repr__(self) -> str:
        return (f"Evaluation(data={self.config.get('data')!r}, methods={self.methods!r}, "
                f"rows={len(self.rows)})")
