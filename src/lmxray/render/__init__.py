"""Renderers: terminal (rich), HTML (jinja2, escaped), PNG plots (matplotlib).

Renderers read result objects by their fields and never compute on a model. Each submodule
imports its heavy dependency only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["show_attribution", "attribution_html", "plot_attribution", "heatmap_png"]

_WHERE = {
    "show_attribution": "console",
    "attribution_html": "html",
    "plot_attribution": "plots",
    "heatmap_png": "plots",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
