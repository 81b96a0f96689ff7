"""Views of a :class:`~lmxray.attribution.context.ContextAttribution`: the context with its
supporting sources highlighted (green: the answer rests on it; red: it works against it), a
ranked table of the top sources, and the quality metrics.

Terminal: ``result.show()``; HTML: ``result.to_html(path)`` (self-contained, every text escaped).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import numpy as np
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..attribution.context import ContextAttribution
from ..result import register_renderer

__all__ = ["context_renderables", "context_html"]


def _weights(r: ContextAttribution) -> np.ndarray:
    """Scores scaled to ``[-1, 1]`` by the largest magnitude (all zero stays zero)."""
    s = np.nan_to_num(np.asarray(r.scores, dtype=np.float64))
    top = float(np.abs(s).max()) if len(s) else 0.0
    return s / top if top > 0 else s


def _rgb(w: float) -> tuple[int, int, int]:
    a = min(1.0, abs(w))
    base = (80, 180, 80) if w >= 0 else (220, 90, 90)
    return tuple(int(round(255 + (c - 255) * a)) for c in base)  # type: ignore[return-value]


def _metric_lines(r: ContextAttribution) -> Iterator[str]:
    drops = r.metrics.get("topk_drop") or {}
    if drops:
        yield "top-k log-prob drop (higher = the top sources matter): " + ", ".join(
            f"k={k}: {v:.3f}" for k, v in sorted(drops.items())
        )
    if "lds" in r.metrics:
        lds = r.metrics["lds"]
        yield "linear datamodeling score (held-out ablations): " + (
            "undefined" if lds is None else f"{lds:.3f}"
        )


@register_renderer(ContextAttribution, "console")
def context_renderables(r: ContextAttribution, top: int = 5, **_: Any) -> list[RenderableType]:
    """The highlighted context, the top sources and the metrics."""
    w = _weights(r)
    head = Text(f"{r.method} over {len(r.spans)} {r.kind} sources · target {r.target!r} · "
                f"log p = {r.full_logprob:.3f}", style="bold")
    body = Text()
    pos = 0
    for (a, b), wi in zip(r.spans, w, strict=True):
        body.append(r.text[pos:a], style="dim")
        red, green, blue = _rgb(float(wi))
        style = f"on rgb({red},{green},{blue})" if abs(wi) >= 0.05 else ""
        body.append(r.text[a:b], style=f"black {style}" if style else "")
        pos = b
    body.append(r.text[pos:], style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("rank", justify="right")
    table.add_column("source", justify="right")
    table.add_column("score", justify="right")
    table.add_column("text")
    for rank, (i, score, text) in enumerate(r.top(top), start=1):
        short = " ".join(text.split())
        table.add_row(str(rank), str(i), f"{score:+.3f}", short[:90] + ("…" if len(short) > 90 else ""))
    return [head, body, table, *(Text(line, style="dim") for line in _metric_lines(r))]


@register_renderer(ContextAttribution, "html")
def context_html(r: ContextAttribution, standalone: bool = True, top: int = 5) -> str:
    """The context with each source's background scaled by its score, the top sources, the metrics."""
    w = _weights(r)
    parts, pos = [], 0
    for k, ((a, b), wi) in enumerate(zip(r.spans, w, strict=True)):
        parts.append(f'<span class="fixed">{html.escape(r.text[pos:a])}</span>')
        red, green, blue = _rgb(float(wi))
        parts.append(
            f'<span class="src" data-source="{k}" title="source {k}: {float(r.scores[k]):+.4f}" '
            f'style="background:rgb({red},{green},{blue})">{html.escape(r.text[a:b])}</span>'
        )
        pos = b
    parts.append(f'<span class="fixed">{html.escape(r.text[pos:])}</span>')
    rows = "".join(
        f"<tr><td>{rank}</td><td>{i}</td><td>{score:+.4f}</td><td>{html.escape(text)}</td></tr>"
        for rank, (i, score, text) in enumerate(r.top(top), start=1)
    )
    metrics = "".join(f"<li>{html.escape(line)}</li>" for line in _metric_lines(r))
    body = (
        f'<div class="lmxray-context"><h2>Which {html.escape(r.kind)}s support the answer</h2>'
        f'<p class="dim">{html.escape(r.method)} · model {html.escape(r.model_name)} · target '
        f'<code>{html.escape(r.target)}</code> · log p = {r.full_logprob:.4f}</p>'
        f'<pre class="ctx">{"".join(parts)}<b class="tgt">{html.escape(r.target)}</b></pre>'
        f'<table><thead><tr><th>rank</th><th>source</th><th>score</th><th>text</th></tr></thead>'
        f"<tbody>{rows}</tbody></table><ul class=\"dim\">{metrics}</ul></div>"
    )
    if not standalone:
        return body
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lmxray context '
        "attribution</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "pre.ctx{white-space:pre-wrap;line-height:1.6;font-size:15px}.fixed{color:#777}"
        ".src{border-radius:3px}.tgt{border-bottom:2px solid #333}.dim{color:#777;font-size:13px}"
        "table{border-collapse:collapse;font-size:14px}td,th{padding:3px 8px;border-bottom:1px "
        f"solid #ddd;text-align:left}}</style></head><body>{body}</body></html>"
    )
