"""Views of evaluation results: the leaderboard as a terminal table (readable at 80 columns),
a self-contained HTML report (jinja2, autoescaped, plots embedded), PNG plots (matplotlib: a
bar chart per metric, mean deletion and insertion curves per method), and terminal tables of
sanity checks, faithfulness summaries and the zoo's per-task evaluation.

The terminal table is the wide one (a row per method, a column per metric) when it fits the
terminal; on a narrower one it turns round (a row per metric, a column per method) and splits
the methods over as many tables as needed, so every value stays readable.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from ..evaluate.faithfulness import Faithfulness
from ..evaluate.report import METRIC_INFO, Evaluation, Leaderboard, best_methods
from ..evaluate.sanity import SanityResult
from ..result import register_renderer
from ..zoo.verify import ZooEvaluation

__all__ = ["LeaderboardTable", "evaluation_renderables", "evaluation_html", "evaluation_png"]


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(f) else f"{f:.{digits}g}"


def _arrow(c: str) -> str:
    return "↑" if METRIC_INFO[c][0] else "↓"


class LeaderboardTable:
    """A rich renderable: the leaderboard, wide when it fits, else turned round and split."""

    def __init__(self, board: Leaderboard) -> None:
        self.frame = board.to_dataframe()
        self.cols = board.display_columns()
        self.best = best_methods(self.frame, self.cols) if len(self.frame) else {}
        self.methods = [str(m) for m in self.frame.index]
        cfg = board.config
        self.title = f"lmxray evaluate · {cfg.get('data', '')} · {cfg.get('model', '')}"

    def _cell(self, m: str, c: str) -> Text:
        return Text(_fmt(self.frame.loc[m, c]), style="bold" if self.best.get(c) == m else "")

    def wide(self) -> Table:
        table = Table(title=self.title, header_style="bold")
        table.add_column("method", no_wrap=True)
        table.add_column("n", justify="right")
        for c in self.cols:
            table.add_column(f"{c} {_arrow(c)}", justify="right", no_wrap=True)
        for m in self.methods:
            table.add_row(m, _fmt(self.frame.loc[m, "n"], 6), *(self._cell(m, c) for c in self.cols))
        return table

    def turned(self, methods: list[str], part: str = "") -> Table:
        table = Table(title=self.title + part, header_style="bold")
        table.add_column("metric", no_wrap=True)
        for m in methods:
            table.add_column(m, justify="right", no_wrap=True)
        table.add_row("n", *(_fmt(self.frame.loc[m, "n"], 6) for m in methods))
        for c in self.cols:
            table.add_row(f"{c} {_arrow(c)}", *(self._cell(m, c) for m in methods))
        return table

    def _fits(self, console: Console, options: ConsoleOptions, table: Table) -> bool:
        wide_open = options.update(width=10_000, max_width=10_000)  # unclamped natural width
        return Measurement.get(console, wide_open, table).maximum <= options.max_width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        wide = self.wide()
        if not self.methods or self._fits(console, options, wide):
            yield wide
            return
        groups: list[list[str]] = [[]]
        for m in self.methods:
            trial = groups[-1] + [m]
            if groups[-1] and not self._fits(console, options, self.turned(trial)):
                groups.append([m])
            else:
                groups[-1] = trial
        for i, g in enumerate(groups):
            yield self.turned(g, f" ({i + 1}/{len(groups)})" if len(groups) > 1 else "")


def _verified_note(board: Leaderboard) -> list[RenderableType]:
    frame = board.to_dataframe()
    if "n_verified" not in frame.columns or frame.empty:
        return []
    return [Text(f"ground truth on verified examples: {int(frame['n_verified'].max())} "
                 f"of {int(frame['n'].max())}", style="dim")]


@register_renderer(Leaderboard, "console")
def leaderboard_renderables(board: Leaderboard, **_: Any) -> list[RenderableType]:
    """The leaderboard table (best value per column in bold) and the verified-examples note."""
    return [LeaderboardTable(board), *_verified_note(board)]


@register_renderer(Evaluation, "console")
def evaluation_renderables(ev: Evaluation, **kw: Any) -> list[RenderableType]:
    """The terminal view of a run: its leaderboard."""
    return leaderboard_renderables(ev.board(), **kw)


# --------------------------------------------------------------------------- PNG
def _bars(ax: Any, board: Any, c: str, methods: list[str], colors: Any) -> None:
    vals = board[c].to_numpy(dtype=float)
    ax.bar(range(len(methods)), np.nan_to_num(vals), color=colors)
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{c} {'(higher better)' if METRIC_INFO[c][0] else '(lower better)'}", fontsize=9)
    ax.axhline(0, color="black", lw=0.5)


def _curve(ax: Any, which: str, cs: dict[str, np.ndarray], methods: list[str], colors: Any) -> None:
    for i, m in enumerate(methods):
        if m in cs:
            ax.plot(np.linspace(0, 1, len(cs[m])), cs[m], label=m, color=colors[i], lw=1.2)
    ax.set_title(f"{which} curve (mean)", fontsize=9)
    ax.set_xlabel("fraction of tokens " + ("removed" if which == "deletion" else "inserted"),
                  fontsize=8)
    ax.legend(fontsize=6)


@register_renderer(Evaluation, "png")
def evaluation_png(ev: Evaluation, dpi: int = 110) -> bytes:
    """A figure: one bar chart per metric, then the mean deletion and insertion curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    board = ev.leaderboard()
    cols = ev.display_columns()
    curves = [(w, c) for w, c in ((w, ev.curves(w)) for w in ("deletion", "insertion")) if c]
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
        _bars(ax, board, c, methods, colors)
    for ax, (which, cs) in zip(flat[len(cols):], curves, strict=False):
        _curve(ax, which, cs, methods, colors)
    for ax in flat[n_plots:]:
        ax.axis("off")
    fig.suptitle(f"{ev.config.get('data', '')} · {ev.config.get('model', '')}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML
def _html(board: Leaderboard, png: str | None, standalone: bool) -> str:
    from jinja2 import Environment

    frame = board.to_dataframe()
    cols = board.display_columns()
    best = best_methods(frame, cols) if len(frame) else {}
    rows = [{"method": str(m), "n": int(rec["n"]), "cells": [
        {"text": _fmt(rec[c], 4), "best": best.get(c) == m} for c in cols]}
        for m, rec in frame.iterrows()]
    html = Environment(autoescape=True).from_string(_TEMPLATE).render(
        config=board.config, rows=rows, sanity=board.sanity, png=png,
        columns=[(c, _arrow(c), METRIC_INFO[c][1]) for c in cols],
        verified=(int(frame["n_verified"].max()) if "n_verified" in frame.columns and len(frame)
                  else None),
        n=int(frame["n"].max()) if len(frame) else 0,
    )
    if standalone:
        return html
    return html.split("<body>", 1)[1].rsplit("</body>", 1)[0]


@register_renderer(Leaderboard, "html")
def leaderboard_html(board: Leaderboard, standalone: bool = True) -> str:
    """The leaderboard and sanity checks as HTML (no plots: the rows are not in the file)."""
    return _html(board, None, standalone)


@register_renderer(Evaluation, "html")
def evaluation_html(ev: Evaluation, standalone: bool = True) -> str:
    """A self-contained HTML report (leaderboard, sanity checks, embedded plots)."""
    try:
        png: str | None = base64.b64encode(evaluation_png(ev)).decode("ascii")
    except InputError:
        png = None
    return _html(ev.board(), png, standalone)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmxray evaluate: {{ config.data }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}td.best{font-weight:bold;background:#eef6ee}
.dim{color:#777;font-size:13px}img{max-width:100%;margin-top:1em}
</style></head><body>
<h1>lmxray evaluate</h1>
<p class="dim">data: {{ config.data }} · model: {{ config.model }} · methods: {{ (config.methods or [])|join(", ") }}
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


# --------------------------------------------------------------------------- other tables
@register_renderer(SanityResult, "console")
def sanity_renderables(r: SanityResult, **_: Any) -> list[RenderableType]:
    """Spearman correlation after each randomisation stage, and the verdict."""
    table = Table(title=f"sanity check · {r.method} · {r.mode}", header_style="bold")
    for col in ("stage", "spearman", "|spearman|"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, s, sa in zip(r.stages, r.spearman, r.spearman_abs, strict=True):
        table.add_row(name, _fmt(s), _fmt(sa))
    verdict = {True: "passed", False: "failed", None: "not judged"}[r.passed]
    return [table, Text(f"{verdict} (threshold |rho| < {r.threshold:g} after the full cascade)",
                        style="dim")]


@register_renderer(Faithfulness, "console")
def faithfulness_renderables(f: Faithfulness, **_: Any) -> list[RenderableType]:
    """The scalar faithfulness metrics (means over target steps)."""
    table = Table(title=f"faithfulness · {f.method} · {f.model_name}", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in f.summary().items():
        table.add_row(k, _fmt(v, 4))
    return [table]


@register_renderer(ZooEvaluation, "console")
def zoo_evaluation_renderables(ev: ZooEvaluation, **_: Any) -> list[RenderableType]:
    """Per task: the metric, its value, the examples, and how many ground truths verify."""
    table = Table(title=f"zoo eval: {ev.model}", header_style="bold")
    for col in ("task", "metric", "value", "n", "verified"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right",
                         no_wrap=True)
    table.add_column("details", overflow="fold")
    for task, row in ev.tasks.items():
        details = "\n".join(f"{k}={v}" for k, v in row.items()
                             if k not in ("metric", "value", "n", "verified", "verify_n"))
        ver = f"{row['verified']}/{row['verify_n']}" if "verified" in row else ""
        table.add_row(task, str(row["metric"]), f"{row['value']}", str(row["n"]), ver, details)
    return [table]
