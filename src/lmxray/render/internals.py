"""Views of the internals results: terminal tables (rich), self-contained HTML reports (jinja2,
autoescaped), PNG heat maps (:func:`lmxray.render.plots.heatmap_png`).

Each view is registered for its result type with :func:`lmxray.result.register_renderer`, so
``r.show()``, ``r.to_html()`` and ``r.to_png()`` find it; results never import this module.
Views only read result fields: they never compute on a model. Every heat map carries a colour
bar (the HTML one is a gradient strip with its end values), and column labels read
``"2 capital"`` (position, then the token; the leading space of a token is not drawn).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jinja2
import numpy as np
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from ..internals.heads import HeadScores
from ..internals.lens import LensResult, TunedLens
from ..internals.patching import PatchingResult
from ..internals.probing import ProbeResult
from ..internals.tracing import TraceResult, TraceSummary
from ..result import register_renderer
from ._view import display_token, rgb_hex, score_rgb, text_rgb
from .plots import heatmap_png

__all__ = [
    "token_label", "position_labels", "heatmap_bytes", "section", "page", "matrix_table",
    "lens_html", "patching_html", "trace_html", "trace_summary_html", "heads_html", "probe_html",
    "tuned_lens_html",
]


# --------------------------------------------------------------------------- labels
def token_label(token: str) -> str:
    """A token as a readable label: its leading/trailing spaces dropped, anything else shown
    (``display_token``); an all-whitespace token keeps its visible form (``·``, ``↵``)."""
    stripped = token.strip(" ")
    return display_token(stripped) if stripped else display_token(token)


def position_labels(tokens: Sequence[str], starred: Sequence[int] = ()) -> list[str]:
    """``"2 capital"`` per token (``*`` after the starred positions)."""
    star = set(starred)
    return [f"{i} {token_label(t)}{'*' if i in star else ''}" for i, t in enumerate(tokens)]


def layer_labels(n: int) -> list[str]:
    return [f"L{i}" for i in range(n)]


# --------------------------------------------------------------------------- PNG
def heatmap_bytes(matrix: Any, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
                  xlabel: str = "", ylabel: str = "", center: bool = True, cmap: str | None = None,
                  colorbar_label: str = "", annotate: bool | None = None) -> bytes:
    """A PNG heat map with a colour bar (diverging and centred on 0 by default; sequential
    with ``center=False``), as bytes. Labels are drawn as given."""
    buf = io.BytesIO()
    heatmap_png(np.asarray(matrix, dtype=np.float64), list(rows), list(cols), buf, title=title,
                cmap=cmap or ("RdBu_r" if center else "viridis"), center=center, xlabel=xlabel,
                ylabel=ylabel, annotate=annotate, colorbar_label=colorbar_label)
    return buf.getvalue()


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
div.cbar{display:flex;align-items:center;gap:.5em;font-size:11px;color:#333;margin:.4em 0 .2em}
div.cbar span.strip{display:inline-block;width:16em;height:.9em;border:1px solid #ccc}
</style></head><body>
<h1>{{ title }}</h1>
<table class="facts">{% for k, v in facts %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% for s in sections %}
<h2>{{ s.heading }}</h2>{% if s.note %}<p class="note">{{ s.note }}</p>{% endif %}
<div class="cbar" title="colour bar">{{ s.bar.low }} <span class="strip" style="background:linear-gradient(to right,{{ s.bar.stops }})"></span> {{ s.bar.high }}{% if s.bar.label %} <em>{{ s.bar.label }}</em>{% endif %}</div>
<table class="hm"><tr><th></th>{% for c in s.cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in s.rows %}<tr><th>{{ r.label }}</th>{% for c in r.cells %}<td style="background:{{ c.bg }};color:{{ c.fg }}" title="{{ c.tip }}">{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
</body></html>
"""
_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def _scale(m: np.ndarray, center: bool) -> tuple[float, float]:
    """``(low, half-range)`` of the colour scale."""
    finite = m[np.isfinite(m)]
    if center:
        lo = -(float(np.abs(finite).max()) if finite.size else 1.0)
        half = -lo
    else:
        lo = float(finite.min()) if finite.size else 0.0
        half = (float(finite.max()) - lo) / 2 if finite.size else 1.0
    return lo, half if half > 0 else 1.0


def _rgb(v: float, lo: float, half: float, center: bool) -> tuple[int, int, int] | None:
    if not math.isfinite(v):
        return None
    return score_rgb(v / half if center else (v - lo) / half - 1.0)


def _cells(m: np.ndarray, texts: Any, center: bool) -> list[list[dict[str, str]]]:
    lo, half = _scale(m, center)
    out = []
    for i in range(m.shape[0]):
        row = []
        for j in range(m.shape[1]):
            v = float(m[i, j])
            rgb = _rgb(v, lo, half, center)
            num = "nan" if not math.isfinite(v) else f"{v:.3g}"
            row.append({"bg": rgb_hex(rgb) if rgb else "#e5e7eb",
                        "fg": rgb_hex(text_rgb(rgb)) if rgb else "#555555",
                        "text": display_token(str(texts[i][j])) if texts is not None else num, "tip": num})
        out.append(row)
    return out


def _bar(m: np.ndarray, center: bool, label: str) -> dict[str, str]:
    """The colour bar of a section: gradient stops and the values at both ends."""
    lo, half = _scale(m, center)
    hi = lo + 2 * half
    stops = []
    for k in range(9):
        rgb = _rgb(lo + 2 * half * k / 8, lo, half, center) or (229, 231, 235)
        stops.append(rgb_hex(rgb))
    return {"low": f"{lo:.3g}", "high": f"{hi:.3g}", "stops": ",".join(stops), "label": label}


def section(heading: str, matrix: Any, rows: Sequence[str], cols: Sequence[str], *, texts: Any = None,
            note: str = "", center: bool = True, bar_label: str = "") -> dict[str, Any]:
    """One heat-map table of a report, with its colour bar. Labels are shown as given."""
    m = np.asarray(matrix, dtype=np.float64)
    cells = _cells(m, texts, center)
    return {"heading": heading, "note": note, "cols": [str(c) for c in cols], "bar": _bar(m, center, bar_label),
            "rows": [{"label": str(r), "cells": c} for r, c in zip(rows, cells, strict=True)]}


def page(title: str, facts: Sequence[tuple[str, Any]], sections: Sequence[dict[str, Any]]) -> str:
    """A self-contained HTML page (autoescaped; loads nothing from the network)."""
    return _ENV.from_string(_TEMPLATE).render(
        title=title, facts=[(k, str(v)) for k, v in facts], sections=list(sections)
    )


def _joined(tokens: Sequence[str]) -> str:
    return " ".join(display_token(t) for t in tokens)


# --------------------------------------------------------------------------- terminal
def matrix_table(title: str, matrix: Any, rows: Sequence[str], cols: Sequence[str],
                 fmt: str = "{:.3f}") -> Table:
    """A plain numeric table for the terminal (labels shown as given)."""
    t = Table(title=title, box=None, header_style="bold")
    t.add_column("")
    for col in cols:
        t.add_column(str(col), justify="right")
    for r, row in zip(rows, np.asarray(matrix), strict=True):
        t.add_row(str(r), *["nan" if not np.isfinite(v) else fmt.format(v) for v in row])
    return t


def _line(text: str) -> Text:
    return Text(text, no_wrap=False)


# --------------------------------------------------------------------------- lens
_LENS_MAPS = ("target_prob", "top_prob", "kl")


@register_renderer(LensResult, "console")
def lens_renderables(r: LensResult, position: int = -1) -> Iterator[Any]:
    """The top-k tokens of every layer at one position."""
    if not -len(r.tokens) <= position < len(r.tokens):
        raise InputError(f"position {position} is outside the prompt's {len(r.tokens)} tokens")
    p = position % len(r.tokens)
    t = Table(title=f"{r.method} at position {p} ({display_token(r.tokens[p])})", box=None,
              header_style="bold")
    for col in ("layer", "top tokens", "P(target)", "rank", "KL"):
        t.add_column(col)
    for i, lab in enumerate(r.layers):
        tops = "  ".join(f"{display_token(s)} {q:.2f}" for s, q in zip(r.top_tokens[i][p], r.top_probs[i, p], strict=True))
        t.add_row(lab, tops, f"{r.target_prob[i, p]:.3f}", str(int(r.target_rank[i, p])), f"{r.kl[i, p]:.3f}")
    yield t


@register_renderer(LensResult, "html")
def lens_html(r: LensResult, standalone: bool = True) -> str:
    facts = [("model", r.model_name), ("lens", r.method), ("prompt", _joined(r.tokens)),
             ("target", display_token(r.target) if r.target is not None else "each position's final top-1")]
    cols = position_labels(r.tokens)
    top1 = [[r.top_tokens[i][j][0] for j in range(len(r.tokens))] for i in range(len(r.layers))]
    secs = [
        section("top-1 token (colour: its probability)", r.top_probs[:, :, 0], r.layers, cols, texts=top1,
                center=False, bar_label="probability"),
        section("probability of the target", r.target_prob, r.layers, cols, center=False, bar_label="probability"),
        section("rank of the target (0 = top)", r.target_rank, r.layers, cols, center=False, bar_label="rank"),
        section("KL(final ‖ lens) in nats", r.kl, r.layers, cols, center=False, bar_label="nats"),
    ]
    return page(f"lmxray · {r.method}", facts, secs)


@register_renderer(LensResult, "png")
def lens_png(r: LensResult, what: str = "target_prob") -> bytes:
    """Heat map of ``target_prob`` (default), ``top_prob`` or ``kl`` (rows: layers)."""
    maps = {"target_prob": r.target_prob, "top_prob": r.top_probs[:, :, 0], "kl": r.kl}
    if what not in maps:
        raise InputError(f"what must be {', '.join(_LENS_MAPS)}, got {what!r}")
    tgt = r.target.strip() if r.target else "final top-1"
    title = f"{r.method} · {what} ({tgt})" if what == "target_prob" else f"{r.method} · {what}"
    return heatmap_bytes(maps[what], r.layers, position_labels(r.tokens), center=False, title=title,
                         xlabel="position", ylabel="layer", colorbar_label="nats" if what == "kl" else "probability")


# --------------------------------------------------------------------------- patching
_EFFECT_NOTE = "normalised effect of patching the clean activation: 0 = corrupted, 1 = clean"


def patching_matrix(r: PatchingResult, kind: str) -> tuple[np.ndarray, list[str], list[str]]:
    """``r.matrix(kind)`` with readable position labels."""
    m, rows, _ = r.matrix(kind)
    if m.shape[1] == len(r.tokens) and r.positions != "all":
        return m, rows, position_labels(r.tokens)
    return m, rows, list(_)


@register_renderer(PatchingResult, "console")
def patching_renderables(r: PatchingResult, k: int = 5) -> Iterator[Any]:
    """The top ``k`` effects per site kind."""
    yield _line(f"{r.method} · metric {r.metric}: clean {r.clean_value:.4g}, corrupted {r.corrupt_value:.4g}")
    t = Table(box=None, header_style="bold")
    for col in ("site", "layer", "head", "position", "effect"):
        t.add_column(col)
    for kind in r.kinds:
        for idx, v in r.top(kind, k):
            head = str(idx[1]) if len(idx) == 3 else "-"
            pos = idx[-1]
            label = "all" if r.positions == "all" else f"{pos} {display_token(r.tokens[pos])}"
            t.add_row(kind, str(idx[0]), head, label, f"{v:.3f}")
    yield t


@register_renderer(PatchingResult, "html")
def patching_html(r: PatchingResult, standalone: bool = True) -> str:
    facts = [("model", r.model_name), ("method", r.method), ("metric", r.metric),
             ("answer / foil", f"{display_token(r.answer)} / {display_token(r.foil or '-')}"),
             ("clean", _joined(r.tokens)), ("corrupted", _joined(r.corrupt_tokens)),
             ("metric clean / corrupted", f"{r.clean_value:.4g} / {r.corrupt_value:.4g}")]
    secs = []
    for kind in r.kinds:
        m, rows, cols = patching_matrix(r, kind)
        secs.append(section(kind, m, rows, cols, note=_EFFECT_NOTE, bar_label="normalised effect"))
    return page(f"lmxray · {r.method}", facts, secs)


@register_renderer(PatchingResult, "png")
def patching_png(r: PatchingResult, kind: str | None = None) -> bytes:
    """A heat map of one site kind (default: the first)."""
    kind = kind or r.kinds[0]
    if kind not in r.effects:
        raise InputError(f"no {kind!r} effects; have {', '.join(r.kinds)}")
    m, rows, cols = patching_matrix(r, kind)
    title = f"{r.method} · {kind} · {r.metric} (corrupt=0, clean=1)"
    return heatmap_bytes(m, rows, cols, title=title, xlabel="position", ylabel="layer",
                         colorbar_label="normalised effect")


# --------------------------------------------------------------------------- tracing
def window_text(window: int, info: dict[str, Any], n_layers: int | None = None) -> str:
    """The restoration window as run, and as asked when the model's depth capped it."""
    asked = info.get("window_requested")
    if asked is not None and int(asked) != int(window):
        return f"{window} layers (asked {asked}; the model has {n_layers or window})"
    return f"{window} layers"


@register_renderer(TraceResult, "console")
def trace_renderables(r: TraceResult, kind: str = "resid_post") -> Iterator[Any]:
    """P(answer) clean / corrupted, and after restoring each (token, layer) state."""
    if kind not in r.restored:
        raise InputError(f"no {kind!r} restorations; have {', '.join(r.restored)}")
    yield _line(f"P({r.answer!r}) clean {r.p_clean:.4f}, corrupted {r.p_corrupt:.4f}")
    m = r.restored[kind]
    yield matrix_table(f"P(answer) after restoring {kind} (rows: tokens, columns: layers)", m.T,
                       position_labels(r.tokens, r.subject_tokens), [str(i) for i in range(m.shape[0])])


@register_renderer(TraceResult, "html")
def trace_html(r: TraceResult, standalone: bool = True) -> str:
    n_l = next(iter(r.restored.values())).shape[0] if r.restored else None
    facts = [("model", r.model_name), ("prompt", _joined(r.tokens)),
             ("subject tokens", f"{r.subject[0]}..{r.subject[1] - 1}"), ("answer", display_token(r.answer)),
             ("P(answer) clean / corrupted", f"{r.p_clean:.4g} / {r.p_corrupt:.4g}"),
             ("noise std", f"{r.noise_std:.4g} × {r.n_samples} samples"),
             ("window (mlp.out, attn.out)", window_text(r.window, r.info, n_l))]
    cols = position_labels(r.tokens, r.subject_tokens)
    secs = [section(f"restoring {kind}", m, layer_labels(m.shape[0]), cols, center=False, bar_label="P(answer)",
                    note="P(answer) after restoring the clean state (subject tokens starred)")
            for kind, m in r.restored.items()]
    return page("lmxray · causal tracing", facts, secs)


@register_renderer(TraceResult, "png")
def trace_png(r: TraceResult, kind: str = "resid_post") -> bytes:
    return _restored_png(r.restored, kind, "restorations", position_labels(r.tokens, r.subject_tokens),
                         title=f"causal tracing · restore {kind} · P({r.answer.strip()})",
                         ylabel="token (* = subject)", colorbar_label="P(answer)")


@register_renderer(TraceSummary, "console")
def trace_summary_renderables(s: TraceSummary) -> Iterator[Any]:
    for kind in s.aie:
        yield Text(s.table(kind))


@register_renderer(TraceSummary, "html")
def trace_summary_html(s: TraceSummary, standalone: bool = True) -> str:
    facts = [("model", s.model_name), ("facts traced", s.n), ("mean P clean", f"{s.p_clean:.4g}"),
             ("mean P corrupted", f"{s.p_corrupt:.4g}"), ("ATE", f"{s.p_clean - s.p_corrupt:.4g}")]
    if "window" in s.info:
        facts.append(("window (mlp.out, attn.out)", window_text(int(s.info["window"]), s.info)))
    secs = [section(f"average indirect effect · {k}", m, layer_labels(m.shape[0]), s.buckets, center=False,
                    bar_label="AIE") for k, m in s.aie.items()]
    return page("lmxray · causal tracing summary", facts, secs)


@register_renderer(TraceSummary, "png")
def trace_summary_png(s: TraceSummary, kind: str = "resid_post") -> bytes:
    return _restored_png(s.aie, kind, "effects", s.buckets,
                         title=f"average indirect effect · restore {kind} · {s.n} facts",
                         colorbar_label="AIE")


def _restored_png(maps: dict[str, np.ndarray], kind: str, what: str, cols: Sequence[str],
                  **labels: str) -> bytes:
    """The ``[layer, column]`` map of site ``kind`` as a token-by-layer heatmap (causal tracing
    views); ``labels``: title, ylabel, colorbar_label."""
    if kind not in maps:
        raise InputError(f"no {kind!r} {what}; have {', '.join(maps)}")
    m = maps[kind]
    return heatmap_bytes(m.T, cols, layer_labels(m.shape[0]), center=False, cmap="Purples",
                         xlabel="layer", **labels)


# --------------------------------------------------------------------------- heads
def heads_data_text(r: HeadScores) -> str:
    """Which prompts the scores were measured on."""
    data = str(r.info.get("data", "")) or "given prompts"
    n = r.info.get("n")
    return f"{data} ({n} sequences)" if n else data


@register_renderer(HeadScores, "console")
def heads_renderables(r: HeadScores, top: int = 5) -> Iterator[Any]:
    """The top heads per score, and the prompts the scores need."""
    yield _line(f"scores on {heads_data_text(r)}")
    for k in r.scores:
        yield _line(f"{k}: " + ", ".join(f"L{lh[0]}H{lh[1]} {v:.3f}" for lh, v in r.top(k, top)))


def _head_sections(r: HeadScores) -> list[dict[str, Any]]:
    secs = [section(f"{k} score", v, layer_labels(v.shape[0]), [f"H{h}" for h in range(v.shape[1])],
                    center=False, bar_label="attention") for k, v in r.scores.items()]
    if r.ablation is not None:
        a = r.ablation
        secs.append(section(f"ablation effect on {r.info.get('ablation_metric', 'metric')}", a,
                            layer_labels(a.shape[0]), [f"H{h}" for h in range(a.shape[1])], bar_label="effect"))
    return secs


@register_renderer(HeadScores, "html")
def heads_html(r: HeadScores, standalone: bool = True) -> str:
    facts = [("model", r.model_name), ("data", heads_data_text(r))]
    return page("lmxray · attention heads", facts, _head_sections(r))


@register_renderer(HeadScores, "png")
def heads_png(r: HeadScores, kind: str = "induction") -> bytes:
    m = r.ablation if kind == "ablation" else r.scores.get(kind)
    if m is None:
        raise InputError(f"nothing to plot for {kind!r}; use {', '.join([*r.scores, 'ablation'])}")
    ablation = kind == "ablation"
    return heatmap_bytes(m, layer_labels(m.shape[0]), [f"H{h}" for h in range(m.shape[1])], center=ablation,
                         title=f"{kind} {'effect' if ablation else 'score'} · {heads_data_text(r)}",
                         xlabel="head", ylabel="layer", colorbar_label="effect" if ablation else "attention")


# --------------------------------------------------------------------------- probes
@register_renderer(ProbeResult, "console")
def probe_renderables(r: ProbeResult) -> Iterator[Any]:
    yield Text(r.table())


@register_renderer(ProbeResult, "html")
def probe_html(r: ProbeResult, standalone: bool = True) -> str:
    facts = [("model", r.model_name), ("site", r.site), ("examples", r.n_examples),
             ("labels", ", ".join(r.labels)), ("control types", r.n_types), ("majority", f"{r.majority:.3f}")]
    rows = ["embed" if layer < 0 else str(layer) for layer in r.layers]
    m = np.stack([r.accuracy, r.control_accuracy, r.selectivity], axis=1)
    return page("lmxray · linear probes", facts,
                [section("accuracy, control-task accuracy and selectivity per layer", m, rows,
                         ["accuracy", "control", "selectivity"], center=False, bar_label="accuracy")])


def _tuned_lens_kl(lens: TunedLens) -> tuple[np.ndarray, list[str]] | None:
    a, b = lens.info.get("heldout_kl_logit"), lens.info.get("heldout_kl_tuned")
    if not a or not b or len(a) != len(b):
        return None
    return np.asarray([a, b], dtype=np.float64), ["embed"] + [str(i) for i in range(len(a) - 1)]


@register_renderer(TunedLens, "console")
def tuned_lens_renderables(lens: TunedLens) -> Iterator[Any]:
    yield _line(f"tuned lens for {lens.model_name or 'a model'}: {lens.n_layers} translators, d={lens.d_model}")
    kl = _tuned_lens_kl(lens)
    if kl is not None:
        yield matrix_table("held-out KL(final ‖ lens), nats", kl[0], ["logit lens", "tuned lens"], kl[1],
                           fmt="{:.4f}")


@register_renderer(TunedLens, "html")
def tuned_lens_html(lens: TunedLens, standalone: bool = True) -> str:
    facts = [("model", lens.model_name), ("translators", lens.n_layers), ("d_model", lens.d_model),
             ("corpus", lens.info.get("corpus", "")), ("steps", lens.info.get("steps", ""))]
    kl = _tuned_lens_kl(lens)
    secs = [] if kl is None else [section("held-out KL(final ‖ lens) in nats", kl[0], ["logit lens", "tuned lens"],
                                          kl[1], center=False, bar_label="nats")]
    return page("lmxray · tuned lens", facts, secs)
