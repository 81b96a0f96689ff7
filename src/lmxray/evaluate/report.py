"""The result of a benchmark run and its leaderboard views: a terminal table (rich), CSV,
a self-contained HTML report (jinja2, autoescaped, plots embedded) and PNG plots (matplotlib:
a bar chart per metric, mean deletion and insertion curves per method).

Everything here reads the rows the runner computed; nothing is recomputed.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..io import atomic_write_bytes, atomic_write_text, to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Evaluation", "METRIC_INFO"]

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
}
GROUNDTRUTH_COLUMNS = ("top1_hit", "topk_hit", "mrr", "evidence_rank")
_NON_METRIC = {"kind", "example", "method", "verified", "deletion_curve", "insertion_curve"}


@dataclass
class Evaluation:
    """Rows of a benchmark run (one per example and method) and the sanity checks.

    Attributes:
        rows: per (example, method) dicts of metric values (and mean curves).
        sanity: per method, the cascading randomisation result.
        config: the run's configuration (model, data, methods, parameters).
        path: the JSONL results file, if any.
    """

    rows: list[dict[str, Any]]
    sanity: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Evaluation:
        """Read a results file written by the runner (plain JSON lines; a torn last line is
        ignored), e.g. to render the leaderboard of a finished or interrupted run."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            raise InputError(f"no such results file: {path}") from None
        records = []
        for line in lines:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        if not records or records[0].get("kind") != "header":
            raise InputError(f"{path} is not an lmxray evaluate results file")
        rows = [r for r in records[1:] if r.get("kind") == "row"]
        sanity = [r for r in records[1:] if r.get("kind") == "sanity"]
        return cls(rows=rows, sanity=sanity, config=records[0].get("config", {}), path=path)

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

    def leaderboard(self) -> pd.DataFrame:
        """Per method: the mean of every metric (ground truth over verified examples only),
        ``n`` examples, ``n_verified``, and the sanity check's final rho and verdict."""
        import pandas as pd

        df = self.to_dataframe()
        out = []
        for m in self.methods:
            sub = df[df["method"] == m] if not df.empty else df
            rec: dict[str, Any] = {"method": m, "n": len(sub)}
            metric_cols = [c for c in sub.columns if c not in _NON_METRIC]
            for c in metric_cols:
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
            out.append(rec)
        board = pd.DataFrame.from_records(out)
        return board.set_index("method") if not board.empty else board

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

    # ------------------------------------------------------------------ views
    def display_columns(self) -> list[str]:
        board = self.leaderboard()
        return [c for c in METRIC_INFO if c in board.columns and board[c].notna().any()]

    def show(self, console: Any = None) -> None:
        """Print the leaderboard as a terminal table (best value per column in bold)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        board = self.leaderboard()
        cols = self.display_columns()
        title = f"lmxray evaluate · {self.config.get('data', '')} · {self.config.get('model', '')}"
        table = Table(title=title, header_style="bold")
        table.add_column("method", no_wrap=True)
        table.add_column("n", justify="right")
        for c in cols:
            table.add_column(f"{c} {'↑' if METRIC_INFO[c][0] else '↓'}", justify="right")
        best = _best(board, cols)
        for m, rec in board.iterrows():
            cells = [str(m), str(int(rec["n"]))]
            for c in cols:
                v = rec[c]
                txt = "–" if not np.isfinite(v) else f"{v:.3g}"
                cells.append(f"[bold]{txt}[/bold]" if best.get(c) == m else txt)
            table.add_row(*cells)
        console.print(table)
        if "n_verified" in board.columns:
            console.print(f"ground truth on verified examples: {int(board['n_verified'].max())} "
                          f"of {int(board['n'].max())}", style="dim")

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The leaderboard as CSV (all metric columns); written atomically to ``path`` if given."""
        text = self.leaderboard().to_csv(float_format="%.6g")
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self) -> str:
        board = self.leaderboard()
        data = {"format": "lmxray.leaderboard/1", "config": self.config,
                "leaderboard": {str(m): {k: v for k, v in rec.items()} for m, rec in board.iterrows()},
                "sanity": self.sanity}
        return json.dumps(to_jsonable(data), indent=1, allow_nan=False)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Per-example rows as Parquet (needs pyarrow)."""
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("writing Parquet needs pyarrow (pip install pyarrow); use the JSONL results") from None
        buf = io.BytesIO()
        self.to_dataframe().to_parquet(buf, index=False)
        return atomic_write_bytes(path, buf.getvalue())

    def png_bytes(self, dpi: int = 110) -> bytes:
        """A figure: one bar chart per metric, then the mean deletion and insertion curves."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        board = self.leaderboard()
        cols = self.display_columns()
        curves = [(w, self.curves(w)) for w in ("deletion", "insertion")]
        curves = [(w, c) for w, c in curves if c]
        n_plots = len(cols) + len(curves)
        if n_plots == 0:
            raise InputError("nothing to plot: the run has no metric values")
        ncols = min(4, n_plots)
        nrows = -(-n_plots // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
        methods = list(board.index)
        colors = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
        flat = axes.ravel()
        for ax, c in zip(flat, cols, strict=False):
            vals = board[c].to_numpy(dtype=float)
            ax.bar(range(len(methods)), np.nan_to_num(vals), color=colors)
            ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{c} {'(higher better)' if METRIC_INFO[c][0] else '(lower better)'}", fontsize=9)
            ax.axhline(0, color="black", lw=0.5)
        for ax, (which, cs) in zip(flat[len(cols):], curves, strict=False):
            for i, m in enumerate(methods):
                if m in cs:
                    y = cs[m]
                    ax.plot(np.linspace(0, 1, len(y)), y, label=m, color=colors[i], lw=1.2)
            ax.set_title(f"{which} curve (mean)", fontsize=9)
            ax.set_xlabel("fraction of tokens " + ("removed" if which == "deletion" else "inserted"), fontsize=8)
            ax.legend(fontsize=6)
        for ax in flat[n_plots:]:
            ax.axis("off")
        fig.suptitle(f"{self.config.get('data', '')} · {self.config.get('model', '')}", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        return buf.getvalue()

    def to_png(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_bytes(path, self.png_bytes())

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """A self-contained HTML report (leaderboard, sanity checks, embedded plots)."""
        from jinja2 import Environment

        board = self.leaderboard()
        cols = self.display_columns()
        best = _best(board, cols)
        rows = []
        for m, rec in board.iterrows():
            rows.append({"method": str(m), "n": int(rec["n"]), "cells": [
                {"text": "–" if not np.isfinite(rec[c]) else f"{rec[c]:.4g}", "best": best.get(c) == m}
                for c in cols]})
        try:
            png = base64.b64encode(self.png_bytes()).decode("ascii")
        except InputError:
            png = None
        env = Environment(autoescape=True)
        html = env.from_string(_TEMPLATE).render(
            config=self.config, columns=[(c, "↑" if METRIC_INFO[c][0] else "↓", METRIC_INFO[c][1]) for c in cols],
            rows=rows, sanity=self.sanity, png=png,
            verified=(int(board["n_verified"].max()) if "n_verified" in board.columns else None),
            n=int(board["n"].max()) if len(board) else 0,
        )
        if path is not None:
            atomic_write_text(path, html)
        return html


def _best(board: Any, cols: list[str]) -> dict[str, Any]:
    out = {}
    for c in cols:
        vals = board[c].astype(float)
        if vals.notna().any():
            out[c] = vals.idxmax() if METRIC_INFO[c][0] else vals.idxmin()
    return out


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmxray evaluate: {{ config.data }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}td.best{font-weight:bold;background:#eef6ee}
.dim{color:#777;font-size:13px}img{max-width:100%;margin-top:1em}
</style></head><body>
<h1>lmxray evaluate</h1>
<p class="dim">data: {{ config.data }} · model: {{ config.model }} · methods: {{ config.methods|join(", ") }}
· {{ n }} examples{% if verified is not none %} · ground truth on {{ verified }} verified examples{% endif %}</p>
<h2>Leaderboard</h2>
<table><thead><tr><th>method</th><th>n</th>
{% for c, arrow, desc in columns %}<th title="{{ desc }}">{{ c }} {{ arrow }}</th>{% endfor %}
</tr></thead><tbody>
{% for r in rows %}<tr><td>{{ r.method }}</td><td>{{ r.n }}</td>
{% for cell in r.cells %}<td{% if cell.best %} class="best"{% endif %}>{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if sanity %}<h2>Sanity check (cascading randomisation, Adebayo et al. 2018)</h2>
<table><thead><tr><th>method</th><th>stages</th><th>Spearman rho per stage</th><th>passed</th></tr></thead><tbody>
{% for s in sanity %}<tr><td>{{ s.method }}</td><td>{{ s.stages|join(" → ") }}</td>
<td>{% for v in s.spearman %}{{ "%.2f"|format(v) if v is not none else "–" }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td>{{ "yes" if s.passed else "no" }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if png %}<h2>Plots</h2><img alt="metric bars and deletion/insertion curves" src="data:image/png;base64,{{ png }}">{% endif %}
<h2>Metrics</h2><ul class="dim">{% for c, arrow, desc in columns %}<li><b>{{ c }}</b> {{ arrow }}: {{ desc }}</li>{% endfor %}</ul>
</body></html>
"""
