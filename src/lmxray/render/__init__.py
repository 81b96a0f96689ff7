"""Views: terminal (rich), HTML (jinja2, escaped), PNG plots (matplotlib).

Renderers read result objects by their fields and never compute on a model. Each view module
registers its functions for the result types it draws (:func:`lmxray.result.register_renderer`);
importing this package registers them all, and a result's ``show`` / ``to_html`` / ``to_png``
imports it on first use. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from . import concepts, console, context, evaluate, html, improve, internals, plots, selfexplain
from .console import show_attribution
from .html import attribution_html
from .plots import heatmap_png, plot_attribution

__all__ = ["show_attribution", "attribution_html", "plot_attribution", "heatmap_png",
           "concepts", "console", "context", "evaluate", "html", "improve", "internals", "plots", "selfexplain"]
