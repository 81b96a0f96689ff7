"""Views of the concepts results: SAE evaluation, the feature view (top contexts, activation
histogram, logit effects), concept scans and TCAV, in the terminal (rich) and HTML (escaped)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jinja2
from markupsafe import Markup
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..concepts.results import ConceptScan, FeatureView, SAEEval, TCAVResult
from ..result import register_renderer
from ._view import display_token

__all__ = ["sae_eval_renderables", "feature_view_renderables", "concept_scan_renderables",
           "tcav_renderables"]

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.tok{white-space:pre}
.bar{background:#3a7;height:10px;display:inline-block}.no{color:#999}</style></head>
<body>{{ body }}</body></html>"""


def _page(title: str, body: str, standalone: bool) -> str:
    return _ENV.from_string(_PAGE).render(title=title, body=Markup(body)) if standalone else body


def _table(title: str, cols: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[x if isinstance(x, Text) else str(x) for x in r])
    return t


def _html_table(title: str, cols: list[str], rows: list[list[Any]]) -> str:
    return _ENV.from_string(
        "<h2>{{ title }}</h2><table><tr>{% for c in cols %}<th>{{ c }}</th>{% endfor %}</tr>"
        "{% for r in rows %}<tr>{% for x in r %}<td>{{ x }}</td>{% endfor %}</tr>{% endfor %}"
        "</table>").render(title=title, cols=cols, rows=rows)


# --------------------------------------------------------------------------- SAE evaluation
def _eval_rows(e: SAEEval) -> list[list[Any]]:
    return [["site", e.site], ["kind / width", f"{e.kind} / {e.d_sae}"], ["tokens", e.tokens],
            ["L0", f"{e.l0:.2f}"], ["variance explained", f"{e.fve:.4f}"],
            ["CE clean / SAE / zero", f"{e.ce_clean:.4f} / {e.ce_sae:.4f} / {e.ce_zero:.4f}"],
            ["CE loss recovered", f"{e.ce_recovered:.4f}"], ["dead latents", f"{e.dead:.3f}"],
            ["dense latents (>10%)", f"{e.dense:.3f}"]]


@register_renderer(SAEEval, "console")
def sae_eval_renderables(e: SAEEval, **_: Any) -> Iterator[RenderableType]:
    yield _table(f"SAE at {e.site} ({e.model})", ["metric", "value"], _eval_rows(e))


@register_renderer(SAEEval, "html")
def sae_eval_html(e: SAEEval, standalone: bool = True, **_: Any) -> str:
    return _page("SAE evaluation", _html_table(f"SAE at {e.site}", ["metric", "value"],
                                               _eval_rows(e)), standalone)


# --------------------------------------------------------------------------- feature view
def _context_text(c: dict[str, Any]) -> Text:
    text = Text()
    top = max(c["max"], 1e-9)
    for tok, a in zip(c["tokens"], c["acts"], strict=True):
        shade = int(255 - 155 * min(a / top, 1.0)) if a > 0 else 255
        style = f"black on rgb({shade},255,{shade})" if a > 0 else ""
        text.append(display_token(tok), style=style)
    return text


def _hist_rows(v: FeatureView, width: int = 30) -> list[list[Any]]:
    peak = max(v.hist_counts, default=0) or 1
    return [[f"{lo:.3f}-{hi:.3f}", n, "█" * round(width * n / peak)]
            for lo, hi, n in zip(v.hist_edges, v.hist_edges[1:], v.hist_counts, strict=False)]


@register_renderer(FeatureView, "console")
def feature_view_renderables(v: FeatureView, **_: Any) -> Iterator[RenderableType]:
    yield Text(f"latent {v.feature} of {v.site}: fires on {100 * v.freq:.2f}% of tokens"
               + (f" ({v.label})" if v.label else ""), style="bold")
    yield _table("top contexts", ["max", "context"],
                 [[f"{c['max']:.3f}", _context_text(c)] for c in v.contexts])
    yield _table("activation histogram (non-zero)", ["range", "count", ""], _hist_rows(v))
    rows = [[display_token(p[0]), f"{p[1]:+.3f}", display_token(s[0]), f"{s[1]:+.3f}"]
            for p, s in zip(v.promoted, v.suppressed, strict=False)]
    yield _table("logit effects", ["promoted", "", "suppressed", ""], rows)


_FEATURE_BODY = """<h2>latent {{ v.feature }} of {{ v.site }}</h2>
<p>fires on {{ '%.2f' % (100 * v.freq) }}% of tokens {{ v.label }}</p><h3>top contexts</h3>
<table>{% for c in v.contexts %}<tr><td>{{ '%.3f' % c.max }}</td><td class="tok">
{%- for t, a in zip(c.tokens, c.acts) %}<span title="{{ '%.3f' % a }}" style="background:
{%- if a > 0 %}rgba(40,170,90,{{ '%.2f' % (a / c.max if c.max > 0 else 0) }}){% else %}none{% endif %}">
{{- t }}</span>{% endfor %}</td></tr>{% endfor %}</table>
<h3>activation histogram (non-zero)</h3><table>{% for r in hist %}<tr><td>{{ r[0] }}</td>
<td>{{ r[1] }}</td><td><span class="bar" style="width:{{ r[1] * 300 // peak }}px"></span></td>
</tr>{% endfor %}</table><h3>logit effects</h3><table><tr><th>promoted</th><th></th>
<th>suppressed</th><th></th></tr>{% for p, s in zip(v.promoted, v.suppressed) %}<tr>
<td class="tok">{{ p[0] }}</td><td>{{ '%+.3f' % p[1] }}</td><td class="tok">{{ s[0] }}</td>
<td>{{ '%+.3f' % s[1] }}</td></tr>{% endfor %}</table>"""


@register_renderer(FeatureView, "html")
def feature_view_html(v: FeatureView, standalone: bool = True, **_: Any) -> str:
    body = _ENV.from_string(_FEATURE_BODY).render(
        v=v, zip=zip, hist=_hist_rows(v), peak=max(v.hist_counts, default=0) or 1)
    return _page(f"latent {v.feature}", body, standalone)


# --------------------------------------------------------------------------- scans and TCAV
def _scan_rows(s: ConceptScan) -> list[list[Any]]:
    return [[r["concept"], r["feature"], f"{r['auroc']:.3f}", r["positives"], r["negatives"]]
            for r in s.rows]


_SCAN_COLS = ["concept", "best latent", "AUROC", "positives", "negatives"]


@register_renderer(ConceptScan, "console")
def concept_scan_renderables(s: ConceptScan, **_: Any) -> Iterator[RenderableType]:
    yield _table(f"known concepts as latents of {s.site}", _SCAN_COLS, _scan_rows(s))


@register_renderer(ConceptScan, "html")
def concept_scan_html(s: ConceptScan, standalone: bool = True, **_: Any) -> str:
    return _page("concept scan", _html_table(f"known concepts as latents of {s.site}",
                                             _SCAN_COLS, _scan_rows(s)), standalone)


def _tcav_rows(r: TCAVResult) -> list[list[Any]]:
    return [[x["concept"], f"{x['score']:.3f}",
             f"{sum(x['random_scores']) / max(len(x['random_scores']), 1):.3f}",
             f"{x['p_value']:.2g}", f"{x.get('p_corrected', x['p_value']):.2g}",
             "yes" if x["significant"] else "no",
             f"{x['cav_accuracy']:.2f}"] for x in r.rows]


_TCAV_COLS = ["concept", "TCAV", "random TCAV", "p", "p (Bonferroni)", "significant",
              "CAV accuracy"]


def _tcav_title(r: TCAVResult) -> str:
    return (f"TCAV at {r.site} for {r.target or 'the targets'} (alpha {r.alpha}, Bonferroni "
            f"over {r.tests} test{'s' if r.tests != 1 else ''})")


@register_renderer(TCAVResult, "console")
def tcav_renderables(r: TCAVResult, **_: Any) -> Iterator[RenderableType]:
    yield _table(_tcav_title(r), _TCAV_COLS, _tcav_rows(r))


@register_renderer(TCAVResult, "html")
def tcav_html(r: TCAVResult, standalone: bool = True, **_: Any) -> str:
    return _page("TCAV", _html_table(_tcav_title(r), _TCAV_COLS, _tcav_rows(r)), standalone)
