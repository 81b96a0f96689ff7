"""Self-contained HTML report of an :class:`~lmxray.result.Attribution`.

The report has a header (model, method, target function, parameters, convergence), the prompt and
target text with tokens coloured by their score for a selected target step (click a target token,
use the selector or the arrow keys; "all steps (sum)" shows the sum over steps), a source × target
heatmap table with the raw values in cells and tooltips, a colour legend, and the raw ``info`` as
collapsible JSON.

Safety: the page is rendered by a jinja2 template with autoescaping on; tokens are never
concatenated into markup, and the data the script reads is embedded with ``tojson`` (which escapes
``<``, ``>``, ``&`` and quotes) and inserted with ``textContent`` only. The page loads nothing from
the network: CSS and JS are inline and fonts are the system's.

The page is fully coloured before any script runs (the first view is rendered here, in Python);
the script only switches views. It marks the report root with ``data-lmx-ready="1"`` once it has
run, or ``data-lmx-error`` if it threw (the browser test reads these).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..result import Attribution, register_renderer
from . import _view

if TYPE_CHECKING:  # pragma: no cover
    import jinja2


__all__ = ["attribution_html", "render_template"]

_counter = itertools.count(1)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("lmxray.render", "templates"),
        autoescape=True,  # every template here is HTML; never turn this off
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **context: Any) -> str:
    """Render one of lmxray's HTML templates (autoescaped) — shared by later report types."""
    return _env().get_template(name).render(**context)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("lmxray")
    except (ImportError, PackageNotFoundError):  # pragma: no cover - source checkout
        return "dev"


def _short(v: float) -> str:
    if not math.isfinite(v):
        return ""
    if v == 0:
        return "0"
    return f"{v:.2g}".replace("e-0", "e-").replace("e+0", "e")


def _none_if_nan(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _step_option(a: Attribution, t: int) -> str:
    return f"{t + 1} · {_view.display_token(a.target_tokens[t])}"


def _token_items(
    a: Attribution, view_norm: np.ndarray, view_raw: np.ndarray, view_upto: int, step: int | str
) -> list[dict[str, Any]]:
    """The coloured source tokens of the first view (the rest of the views are the script's)."""
    p = a.prompt_length
    tokens = []
    for s, tok in enumerate(a.source_tokens):
        label = _view.display_token(tok, whitespace=False)
        cls = ["lmx-tok"]
        if s >= p:
            cls.append("lmx-tgt")
        if _view.is_special_token(a, s):
            cls.append("lmx-special")
        colours = None
        if s < view_upto:
            colours = _view.cell_colours(float(view_norm[s]))
            if colours is None:
                cls.append("lmx-nan")
        elif step != "sum" and s == view_upto:
            cls.append("lmx-current")
        else:
            cls.append("lmx-future")
        val = float(view_raw[s]) if s < view_upto else float("nan")
        tokens.append(
            {
                "s": s,
                "label": label,
                "cls": " ".join(cls),
                "style": f"background-color:{colours[0]};color:{colours[1]}" if colours else "",
                "title": f"{tok!r} · {_view.format_value(val)}" if s < view_upto else repr(tok),
                "step": s - p if s >= p else None,
                "newline": "\n" in tok,
            }
        )
    return tokens


def _heat_rows(a: Attribution, norm: np.ndarray) -> list[dict[str, Any]]:
    """One row of the source × target table per source token, every cell coloured."""
    p, n_t = a.prompt_length, len(a.target_tokens)
    heat_rows = []
    for s, tok in enumerate(a.source_tokens):
        cells = []
        for t in range(n_t):
            v = float(a.scores[t, s])
            colours = _view.cell_colours(float(norm[t, s]))
            head = f"{_view.display_token(tok)} → {_view.display_token(a.target_tokens[t])} (step {t + 1})"
            cells.append(
                {
                    "text": _short(v),
                    "style": f"background-color:{colours[0]};color:{colours[1]}" if colours else "",
                    "title": f"{head}: {_view.format_value(v)}"
                    if colours
                    else f"{head}: not attributable",
                    "nan": colours is None,
                }
            )
        heat_rows.append(
            {
                "label": _view.display_token(tok),
                "title": repr(tok),
                "target": s >= p,
                "special": _view.is_special_token(a, s),
                "cells": cells,
            }
        )
    return heat_rows


@register_renderer(Attribution, "html")
def attribution_html(
    a: Attribution,
    standalone: bool = True,
    *,
    normalize: str = "step",
    step: int | str | None = None,
    title: str | None = None,
) -> str:
    """Render ``a`` as HTML.

    Args:
        a: the result.
        standalone: a full page (``True``) or a fragment for notebooks (``False``).
        normalize: initial colour scaling, ``"step"`` (each step by its max |score|) or
            ``"global"``; the page can switch.
        step: initial view: a target step index, or ``"sum"`` (default when there are several
            steps) for the sum over steps.
        title: page title (default: ``"lmxray · <method> · <model>"``).

    Returns:
        The HTML text (escaped; loads nothing from the network).
    """
    if normalize not in ("step", "global"):
        raise ValueError(f"normalize must be 'step' or 'global', got {normalize!r}")
    n_t, n_s, p = len(a.target_tokens), len(a.source_tokens), a.prompt_length
    if step is None:
        step = "sum" if n_t > 1 else 0
    if step != "sum":
        if not isinstance(step, (int, np.integer)) or not -n_t <= int(step) < n_t:
            raise ValueError(f"step must be 'sum' or an index below {n_t}, got {step!r}")
        step = int(step) % n_t

    norm, scale = _view.normalised_rows(a, normalize)
    agg_raw, agg_norm, agg_scale = _view.aggregate_row(a)
    if step == "sum":
        view_norm, view_raw, view_upto = agg_norm, agg_raw, n_s - 1
    else:
        assert isinstance(step, int)
        view_norm, view_raw, view_upto = norm[step], a.scores[step], p + step

    tokens = _token_items(a, view_norm, view_raw, view_upto, step)
    heat_rows = _heat_rows(a, norm)

    data = {
        "scores": [[_none_if_nan(v) for v in row] for row in a.scores.tolist()],
        "targetScores": [_none_if_nan(v) for v in a.target_scores.tolist()],
        "sourceLabels": [_view.display_token(t) for t in a.source_tokens],
        "sourceRepr": [repr(t) for t in a.source_tokens],
        "targetLabels": [_view.display_token(t) for t in a.target_tokens],
        "promptLength": p,
        "palette": _view.PALETTE,
        "fnName": _view.target_fn_label(a),
        "initialStep": step,
        "normalize": normalize,
    }
    uid = "lmx-" + hashlib.sha1(a.to_json().encode()).hexdigest()[:8] + f"-{next(_counter)}"
    context = {
        "standalone": standalone,
        "uid": uid,
        "title": title or f"lmxray · {a.method} · {a.model_name or 'model'}",
        "facts": _view.header_facts(a),
        "prompt_text": "".join(a.prompt_tokens),
        "target_text": "".join(a.target_tokens),
        "tokens": tokens,
        "steps": [
            {"index": t, "label": _step_option(a, t), "value": _view.format_value(a.target_scores[t])}
            for t in range(n_t)
        ],
        "n_targets": n_t,
        "step": step,
        "fn_name": _view.target_fn_label(a),
        "scale": _view.format_value(agg_scale if step == "sum" else scale[step]),
        "caption_value": _view.format_value(
            float(np.nansum(a.target_scores)) if step == "sum" else a.target_scores[step]
        ),
        "heat_targets": [{"label": _view.display_token(t), "title": repr(t)} for t in a.target_tokens],
        "heat_rows": heat_rows,
        "palette_css": ", ".join(_view.PALETTE),
        "normalize": normalize,
        "data": data,
        "verification": _view.verification_summary(a),
        "info_json": json.dumps(a.to_dict()["info"], indent=2, ensure_ascii=False, sort_keys=True),
        "version": _version(),
    }
    return render_template("attribution.html.j2", **context)
