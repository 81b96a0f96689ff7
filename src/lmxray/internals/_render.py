"""Pictures of the internals results: PNG heat maps, self-contained HTML tables, terminal tables.

PNGs go through :func:`lmxray.render.plots.heatmap_png` (matplotlib, atomic writes). HTML is a
jinja2 template with autoescaping on, so tokens never become markup; it loads nothing from the
network. These views only read result fields: they never compute.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_write_text
from ..render._view import display_token, rgb_hex, score_rgb, text_rgb

if TYPE_CHECKING:  # pragma: no cover
    from .heads import HeadScores
    from .lens import LensResult
    from .patching import PatchingResult
    from .tracing import TraceResult, TraceSummary

__all__ = ["heatmap", "page", "write_html", "patching_html", "trace_html", "lens_html", "heads_html"]


def heatmap(matrix: Any, rows: Sequence[str], cols: Sequence[str], path: str | os.PathLike[str], *,
            title: str = "", xlabel: str = "", ylabel: str = "", center: bool = True,
            cmap: str | None = None, annotate: bool | None = None) -> Path:
    """A PNG heat map (diverging and centred on 0 by default; sequential with ``center=False``)."""
    try:
        from ..render.plots import heatmap_png
    except ImportError:  # pragma: no cover - the shared plotting module is absent
        return _fallback_heatmap(matrix, rows, cols, path, title=title, center=center)
    return heatmap_png(np.asarray(matrix, dtype=np.float64), list(rows), list(cols), path, title=title,
                       cmap=cmap or ("RdBu_r" if center else "viridis"), center=center,
                       xlabel=xlabel, ylabel=ylabel, annotate=annotate)


def _fallback_heatmap(matrix: Any, rows: Sequence[str], cols: Sequence[str], path: Any, *, title: str,
                      center: bool) -> Path:
    import tempfile

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    path = Path(path)
    fig = Figure(figsize=(max(4.0, 1.5 + 0.4 * m.shape[1]), max(2.5, 1.2 + 0.3 * m.shape[0])))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    im = ax.imshow(m, cmap="RdBu_r" if center else "viridis", aspect="auto",
                   vmin=-lim if center else None, vmax=lim if center else None)
    ax.set_xticks(range(len(cols)), [display_token(str(c)) for c in cols], rotation=60, fontsize=7)
    ax.set_yticks(range(len(rows)), [display_token(str(r)) for r in rows], fontsize=7)
    ax.set_title(title.replace("$", r"\$"), fontsize=9)
    fig.colorbar(im, ax=ax)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- HTML
_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#111}
h1{font-size:1.25em} h2{font-size:1.05em;margin-top:1.6em}
table.facts td{padding:.1em .8em .1em 0} table.facts td:first-child{color:#555}
table.hm{border-collapse:collapse;font-size:12px;font-family:ui-monospace,monospace}
table.hm th{font-weight:normal;padding:2px 4px;white-space:pre;color:#333}
table.hm td{padding:2px 4px;text-align:center;min-width:2.4em;white-space:pre}
p.note{color:#555;font-size:.9em;max-width:60em}
</style></head><body>
<h1>{{ title }}</h1>
<table class="facts">{% for k, v in facts %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% for s in sections %}
<h2>{{ s.heading }}</h2>{% if s.note %}<p class="note">{{ s.note }}</p>{% endif %}
<table class="hm"><tr><th></th>{% for c in s.cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in s.rows %}<tr><th>{{ r.label }}</th>{% for c in r.cells %}<td style="background:{{ c.bg }};color:{{ c.fg }}" title="{{ c.tip }}">{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
</body></html>
"""


def _cells(matrix: np.ndarray, texts: Any = None, *, center: bool = True) -> list[list[dict[str, str]]]:
    m = np.asarray(matrix, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if center:
        scale = float(np.abs(finite).max()) if finite.size else 1.0
        lo = -scale
    else:
        lo = float(finite.min()) if finite.size else 0.0
        scale = (float(finite.max()) - lo) / 2 if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    out = []
    for i in range(m.shape[0]):
        row = []
        for j in range(m.shape[1]):
            v = m[i, j]
            rgb = score_rgb((v / scale) if center else (v - lo) / scale - 1.0) if math.isfinite(v) else None
            bg = rgb_hex(rgb) if rgb else "#e5e7eb"
            fg = rgb_hex(text_rgb(rgb)) if rgb else "#555555"
            num = "nan" if not math.isfinite(v) else f"{v:.3g}"
            text = display_token(str(texts[i][j])) if texts is not None else num
            row.append({"bg": bg, "fg": fg, "text": text, "tip": num})
        out.append(row)
    return out


def section(heading: str, matrix: Any, rows: Sequence[str], cols: Sequence[str], *, texts: Any = None,
            note: str = "", center: bool = True) -> dict[str, Any]:
    """One heat-map table of a report."""
    cells = _cells(np.asarray(matrix), texts, center=center)
    return {"heading": heading, "note": note, "cols": [display_token(str(c)) for c in cols],
            "rows": [{"label": display_token(str(r)), "cells": c} for r, c in zip(rows, cells, strict=True)]}


def page(title: str, facts: Sequence[tuple[str, Any]], sections: Sequence[dict[str, Any]]) -> str:
    """A self-contained HTML page (autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(
        title=title, facts=[(k, str(v)) for k, v in facts], sections=list(sections)
    )


def write_html(text: str, path: Any = None) -> str:
    """Return ``text``; also write it atomically when ``path`` is given."""
    if path is not None:
        atomic_write_text(path, text)
    return text


def patching_html(r: PatchingResult) -> str:
    facts = [("model", r.model_name), ("method", r.method), ("metric", r.metric),
             ("answer / foil", f"{display_token(r.answer)} / {display_token(r.foil or '-')}"),
             ("clean", " ".join(display_token(t) for t in r.tokens)),
             ("corrupted", " ".join(display_token(t) for t in r.corrupt_tokens)),
             ("metric clean / corrupted", f"{r.clean_value:.4g} / {r.corrupt_value:.4g}")]
    secs = []
    for kind in r.kinds:
        m, rows, cols = r.matrix(kind)
        secs.append(section(f"{kind}", m, rows, cols,
                            note="normalised effect of patching the clean activation: 0 = corrupted, 1 = clean"))
    return page(f"lmxray · {r.method}", facts, secs)


def trace_html(r: TraceResult) -> str:
    facts = [("model", r.model_name), ("prompt", " ".join(display_token(t) for t in r.tokens)),
             ("subject tokens", f"{r.subject[0]}..{r.subject[1] - 1}"), ("answer", display_token(r.answer)),
             ("P(answer) clean / corrupted", f"{r.p_clean:.4g} / {r.p_corrupt:.4g}"),
             ("noise std", f"{r.noise_std:.4g} × {r.n_samples} samples"), ("window", r.window)]
    secs = []
    for kind, m in r.restored.items():
        cols = [f"{i} {t}{'*' if r.subject[0] <= i < r.subject[1] else ''}" for i, t in enumerate(r.tokens)]
        secs.append(section(f"restoring {kind}", m, [f"L{i}" for i in range(m.shape[0])], cols,
                            center=False, note="P(answer) after restoring the clean state (subject tokens starred)"))
    return page("lmxray · causal tracing", facts, secs)


def trace_summary_html(s: TraceSummary) -> str:
    facts = [("model", s.model_name), ("facts traced", s.n), ("mean P clean", f"{s.p_clean:.4g}"),
             ("mean P corrupted", f"{s.p_corrupt:.4g}"), ("ATE", f"{s.p_clean - s.p_corrupt:.4g}")]
    secs = [section(f"average indirect effect · {k}", m, [f"L{i}" for i in range(m.shape[0])], s.buckets,
                    center=False) for k, m in s.aie.items()]
    return page("lmxray · causal tracing summary", facts, secs)


def lens_html(r: LensResult) -> str:
    facts = [("model", r.model_name), ("lens", r.method),
             ("prompt", " ".join(display_token(t) for t in r.tokens)),
             ("target", display_token(r.target) if r.target is not None else "each position's final top-1")]
    cols = [f"{i} {t}" for i, t in enumerate(r.tokens)]
    top1 = [[r.top_tokens[i][j][0] for j in range(len(r.tokens))] for i in range(len(r.layers))]
    secs = [
        section("top-1 token (colour: its probability)", r.top_probs[:, :, 0], r.layers, cols, texts=top1,
                center=False),
        section("probability of the target", r.target_prob, r.layers, cols, center=False),
        section("rank of the target (0 = top)", r.target_rank, r.layers, cols, center=False),
        section("KL(final ‖ lens) in nats", r.kl, r.layers, cols, center=False),
    ]
    return page(f"lmxray · {r.method}", facts, secs)


def heads_html(r: HeadScores) -> str:
    facts = [("model", r.model_name), ("data", r.info.get("data", "")), ("sequences", r.info.get("n", ""))]
    secs = [section(f"{k} score", v, [f"L{i}" for i in range(v.shape[0])], [f"H{h}" for h in range(v.shape[1])],
                    center=False) for k, v in r.scores.items()]
    if r.ablation is not None:
        a = r.ablation
        secs.append(section(f"ablation effect on {r.info.get('ablation_metric', 'metric')}", a,
                            [f"L{i}" for i in range(a.shape[0])], [f"H{h}" for h in range(a.shape[1])]))
    return page("lmxray · attention heads", facts, secs)


# --------------------------------------------------------------------------- terminal
def _console(console: Any) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console(highlight=False)


def show_patching(r: PatchingResult, console: Any = None) -> None:
    from rich.table import Table

    c = _console(console)
    c.print(f"{r.method} · metric {r.metric}: clean {r.clean_value:.4g}, corrupted {r.corrupt_value:.4g}",
            markup=False)
    t = Table(box=None, header_style="bold")
    for col in ("site", "layer", "head", "position", "effect"):
        t.add_column(col)
    for kind in r.kinds:
        for idx, v in r.top(kind, 5):
            head = str(idx[1]) if len(idx) == 3 else "-"
            pos = idx[-1]
            label = "all" if r.positions == "all" else f"{pos} {display_token(r.tokens[pos])}"
            t.add_row(kind, str(idx[0]), head, label, f"{v:.3f}")
    c.print(t)


def show_matrix(title: str, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], console: Any = None,
                fmt: str = "{:.3f}") -> None:
    """A plain numeric table in the terminal."""
    from rich.table import Table

    c = _console(console)
    t = Table(title=title, box=None, header_style="bold")
    t.add_column("")
    for col in cols:
        t.add_column(display_token(str(col)), justify="right")
    for r, row in zip(rows, np.asarray(matrix), strict=True):
        t.add_row(display_token(str(r), whitespace=False), *["nan" if not np.isfinite(v) else fmt.format(v) for v in row])
    c.print(t)
