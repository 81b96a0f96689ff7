"""Views of a :class:`~lmxray.selfexplain.report.SelfExplainReport`.

- Terminal (rich): one table, a block of rows per test: each aggregate with its bootstrap 95%
  interval, the test's counts (items, unparsed answers) under its name, and its verdict (``unfaithful`` when the
  test's flag rule fires, ``faithful`` otherwise, ``n/a`` without data); fits 80 columns.
  ``examples=k`` adds the first ``k`` examples (explanation and per-test verdicts).
- HTML (jinja2, autoescaped): the same summary, then every example's explanation next to each
  test's verdict for that example. Model text is never trusted: it is escaped, and control
  characters are made visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..result import register_renderer
from ..selfexplain.report import SelfExplainReport

__all__ = ["selfexplain_renderables", "selfexplain_html"]

_VERDICT_STYLE = {"unfaithful": "bold red", "faithful": "bold green", "n/a": "dim"}
_COUNTS = ("n", "parse_failed")


def _is_count(name: str) -> bool:
    return name in _COUNTS or name.startswith("n_") or name == "cites_nothing"


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def _interval(v: tuple[float, float, float]) -> str:
    if any(x is None or math.isnan(x) for x in v):
        return "-"
    return f"[{_num(v[1])}, {_num(v[2])}]"


def _count(agg: dict[str, Any], name: str) -> str:
    v = agg.get(name)
    return "-" if v is None or math.isnan(v[0]) else str(int(v[0]))


def _visible(text: str, limit: int | None = None) -> str:
    """Control characters as escapes; newlines as ``↵``; cut to ``limit`` characters."""
    out = "".join(
        "↵ " if c == "\n" else c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text
    )
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)] + "…"
    return out


def _facts(report: SelfExplainReport) -> str:
    cfg = report.config
    gen = cfg.get("generator") or {}
    n_items = len(cfg.get("items") or [])
    parts = [f"model {gen.get('name', '?')}", f"format {cfg.get('format', '?')}",
             f"{n_items} items"]
    retries = report.info.get("retries")
    if retries:
        parts.append(f"{retries} retries")
    return " · ".join(parts)


def _summary_table(report: SelfExplainReport) -> Table:
    table = Table(title="Self-explanation faithfulness", caption=_facts(report),
                  title_justify="left", caption_justify="left", expand=False)
    table.add_column("test", no_wrap=True)
    table.add_column("measure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("95% CI", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for t in report.tests:
        agg = report.aggregates.get(t, {})
        metrics = [(k, v) for k, v in agg.items() if not _is_count(k)] or [("-", (math.nan,) * 3)]
        verdict = report.verdict(t)
        counts = Text(f"n={_count(agg, 'n')}, {_count(agg, 'parse_failed')} unparsed", style="dim")
        for i, (k, v) in enumerate(metrics):
            if i == 0:
                head = Text(t, style="bold")
                if len(metrics) == 1:
                    head.append("\n").append_text(counts)
            else:
                head = counts if i == 1 else Text("")
            table.add_row(head, k, _num(v[0]), _interval(v),
                          Text(verdict, style=_VERDICT_STYLE.get(verdict, "")) if i == 0 else "",
                          end_section=i == len(metrics) - 1)
    return table


def _examples_table(report: SelfExplainReport, k: int) -> Table:
    table = Table(title=f"First {k} examples", title_justify="left")
    table.add_column("id", no_wrap=True, max_width=14)
    table.add_column("explanation", ratio=1, overflow="fold")
    table.add_column("verdicts", overflow="fold", max_width=28)
    for ex in report.examples()[:k]:
        verdicts = "\n".join(f"{t}: {v}" for t, (v, _) in ex["tests"].items())
        table.add_row(_visible(ex["id"], 14), _visible(ex["explanation"], 200), verdicts)
    return table


@register_renderer(SelfExplainReport, "console")
def selfexplain_renderables(report: SelfExplainReport, examples: int = 0,
                            **_: Any) -> Iterator[RenderableType]:
    """The summary table (and ``examples`` example rows)."""
    yield _summary_table(report)
    if examples > 0 and report.rows:
        yield _examples_table(report, examples)
    if report.path is not None:
        yield Text(f"rows in {report.path}", style="dim")


# --------------------------------------------------------------------------- HTML
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.unfaithful{color:#b00020;font-weight:bold}.faithful{color:#1b7f3b;font-weight:bold}
.na{color:#888}.expl{white-space:pre-wrap;max-width:48em;font-family:ui-monospace,monospace}
.facts{color:#555}
</style></head><body>
{{ body }}
</body></html>
"""

_BODY = """<section class="lmxray-selfexplain">
<h2>{{ title }}</h2>
<p class="facts">{{ facts }}</p>
<table class="summary"><thead><tr><th>test</th><th>verdict</th><th>measure</th>
<th>value</th><th>95% CI</th><th>n</th><th>parse failures</th></tr></thead><tbody>
{% for t in tests %}{% for m in t.metrics %}<tr>
{% if loop.first %}<td rowspan="{{ t.metrics|length }}"><b>{{ t.name }}</b></td>
<td rowspan="{{ t.metrics|length }}" class="{{ t.css }}">{{ t.verdict }}</td>{% endif %}
<td>{{ m.name }}</td><td class="num">{{ m.value }}</td><td class="num">{{ m.ci }}</td>
{% if loop.first %}<td class="num" rowspan="{{ t.metrics|length }}">{{ t.n }}</td>
<td class="num" rowspan="{{ t.metrics|length }}">{{ t.failed }}</td>{% endif %}
</tr>{% endfor %}{% endfor %}
</tbody></table>
<h3>Examples ({{ examples|length }}{% if truncated %} of {{ n_examples }}{% endif %})</h3>
<table class="examples"><thead><tr><th>id</th><th>explanation</th><th>answer</th>
{% for t in tests %}<th>{{ t.name }}</th>{% endfor %}</tr></thead><tbody>
{% for ex in examples %}<tr><td>{{ ex.id }}</td><td class="expl">{{ ex.explanation }}</td>
<td>{{ ex.answer }}</td>
{% for t in tests %}{% set v = ex.tests.get(t.name) %}<td class="{{ v.css if v else 'na' }}"
 title="{{ v.detail if v else '' }}">{{ v.verdict if v else '-' }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
</section>"""


def _css(verdict: str) -> str:
    if "silently" in verdict or verdict == "unfaithful":
        return "unfaithful"
    if verdict in ("faithful", "resists bias", "follows bias, says so"):
        return "faithful"
    return "na" if verdict in ("n/a", "parse failed") else ""


def _letter(v: Any) -> str:
    return f"({chr(65 + v)})" if isinstance(v, int) and 0 <= v < 26 else "-"


def _context(report: SelfExplainReport, max_examples: int) -> dict[str, Any]:
    tests = []
    for t in report.tests:
        agg = report.aggregates.get(t, {})
        metrics = [{"name": k, "value": _num(v[0]),
                    "ci": _interval(v)}
                   for k, v in agg.items() if not _is_count(k)] or [{"name": "-", "value": "-", "ci": "-"}]
        verdict = report.verdict(t)
        tests.append({"name": t, "metrics": metrics, "verdict": verdict, "css": _css(verdict),
                      "n": _count(agg, "n"), "failed": _count(agg, "parse_failed")})
    exs = report.examples()
    shown = []
    for ex in exs[:max_examples]:
        shown.append({
            "id": _visible(ex["id"]), "explanation": _visible(ex["explanation"]).replace("↵ ", "\n"),
            "answer": f"{_letter(ex['answer'])} / gold {_letter(ex['reference'])}",
            "tests": {t: {"verdict": v, "detail": d, "css": _css(v)} for t, (v, d) in ex["tests"].items()},
        })
    return {"title": "Self-explanation faithfulness", "facts": _facts(report), "tests": tests,
            "examples": shown, "n_examples": len(exs), "truncated": len(exs) > max_examples}


@register_renderer(SelfExplainReport, "html")
def selfexplain_html(report: SelfExplainReport, standalone: bool = True, max_examples: int = 500,
                     **_: Any) -> str:
    """HTML report (escaped): summary with CIs and verdicts, then each example's explanation
    next to each test's verdict (the first ``max_examples``)."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    body = env.from_string(_BODY).render(**_context(report, max_examples))
    if not standalone:
        return body
    return env.from_string(_PAGE).render(title="Self-explanation faithfulness", body=Markup(body))
