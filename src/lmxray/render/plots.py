"""PNG heatmaps with matplotlib (Agg, no pyplot global state).

:func:`heatmap_png` is the generic helper (any labelled matrix: attribution, patching sweeps, logit
lens); :func:`plot_attribution` draws a result's source × target scores with it. NaN cells are
drawn hatched grey; a diverging colour map is centred on zero. Files are written atomically.

Example:
    >>> from lmxray.render.plots import heatmap_png
    >>> heatmap_png([[0.1, -0.2]], ["a"], ["x", "y"], "m.png", title="demo")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import InputError
from ..io import atomic_write_with, check_output
from ..result import Attribution, register_renderer
from ._view import display_token, normalised_rows, target_fn_label, text_rgb

__all__ = ["heatmap_png", "plot_attribution", "attribution_png"]

_MAX_INCHES = 40.0  # a figure side never exceeds this (6000 px at 150 dpi)
_ANNOTATE_MAX_CELLS = 600


def _plain(label: Any) -> str:
    """A tick label matplotlib draws literally: no mathtext (``$``), control characters escaped."""
    return display_token(str(label), whitespace=False).replace("$", r"\$")


def _save(fig: Any, path: Path | BinaryIO, dpi: int) -> None:
    """Save as PNG: atomically to a path (:func:`lmxray.io.atomic_write_with`, the one
    permission rule), or straight into a binary file object."""
    if not isinstance(path, Path):
        fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
        return
    atomic_write_with(
        path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"),
        suffix=".tmp.png",
    )


def _color_limits(
    m: np.ndarray, center: bool, vmin: float | None, vmax: float | None
) -> tuple[float, float]:
    """Colour limits: given ones win; else symmetric around 0 (``center``) or the data range."""
    finite = m[np.isfinite(m)]
    if vmin is not None and vmax is not None:
        return vmin, vmax
    if center:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        lo, hi = -lim, lim
    else:
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        if hi <= lo:
            hi = lo + 1.0
    return (lo if vmin is None else vmin), (hi if vmax is None else vmax)


def _figure_size(rows: list[str], cols: list[str]) -> tuple[float, float]:
    """Inches wide and high for these labels (capped at ``_MAX_INCHES``)."""
    n_r, n_c = len(rows), len(cols)
    row_chars = max((len(r) for r in rows), default=1)
    col_chars = max((len(c) for c in cols), default=1)
    width = min(_MAX_INCHES, 1.6 + 0.11 * min(row_chars, 40) + 0.42 * n_c + 1.2)
    height = min(_MAX_INCHES, 1.4 + 0.09 * min(col_chars, 40) + (0.30 if n_r <= 40 else 0.16) * n_r)
    return max(width, 4.0), max(height, 2.6)


def _ticks(n: int, max_labels: int) -> list[int]:
    step = max(1, math.ceil(n / max_labels))
    return list(range(0, n, step))


def _label_axes(
    ax: Any, rows: list[str], cols: list[str], size: tuple[float, float],
    xlabel: str, ylabel: str, title: str,
) -> None:
    """Tick labels (every k-th on long axes), axis labels and title."""
    col_chars = max((len(c) for c in cols), default=1)
    xt = _ticks(len(cols), int(size[0] * 3.2))
    yt = _ticks(len(rows), int(size[1] * 4.5))
    ax.set_xticks(
        xt,
        [cols[i] for i in xt],
        rotation=60 if col_chars > 2 else 0,
        ha="right" if col_chars > 2 else "center",
        rotation_mode="anchor",
        fontsize=8,
        family="monospace",
    )
    ax.set_yticks(yt, [rows[i] for i in yt], fontsize=8, family="monospace")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    if title:
        ax.set_title(title.replace("$", r"\$"), fontsize=10, loc="left")


def _annotate_cells(ax: Any, m: np.ndarray, cm: Any, norm: Any) -> None:
    """The value of every finite cell, in black or white by contrast with its colour."""
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            v = m[r, c]
            if not math.isfinite(v):
                continue
            rgba = cm(norm(v))
            fg = text_rgb(tuple(int(x * 255) for x in rgba[:3]))  # type: ignore[arg-type]
            ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                    color="#{:02x}{:02x}{:02x}".format(*fg))


def _draw(
    m: np.ndarray, rows: list[str], cols: list[str], cmap: str, limits: tuple[float, float],
) -> tuple[Any, Any, Any, Any, Any]:
    """Figure, axes, image, colour map and norm of the heatmap (NaN cells transparent over a
    hatched grey ground, so "undefined" never looks like "zero")."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=_figure_size(rows, cols))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cm = colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    norm = Normalize(vmin=limits[0], vmax=limits[1])
    n_r, n_c = m.shape
    ax.add_patch(Rectangle((-0.5, -0.5), n_c, n_r, facecolor="#eef0f3", edgecolor="#c4c9d0",
                           hatch="///", linewidth=0, zorder=0))
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=norm, aspect="auto",
                   interpolation="nearest", zorder=1)
    return fig, ax, im, cm, norm


def heatmap_png(
    matrix: Any,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    path: str | os.PathLike[str] | BinaryIO,
    title: str = "",
    cmap: str = "RdBu_r",
    *,
    center: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    annotate: bool | None = None,
    dpi: int = 150,
) -> Path | BinaryIO:
    """Write a labelled heatmap of ``matrix`` (``[rows, cols]``) as a PNG.

    Args:
        matrix: 2-D numbers; NaN cells are drawn hatched grey (undefined).
        row_labels / col_labels: one label per row / column, shown literally (newlines and
            control characters made visible; pass tokens through ``display_token`` first to show
            spaces as ``·``). Long axes show every k-th label.
        path: output ``.png`` (its folder must exist; written atomically), or a binary file
            object such as ``io.BytesIO`` (to render before writing anything).
        title: figure title.
        cmap: matplotlib colour map name (diverging by default).
        center: make the colour scale symmetric around 0 (for signed scores).
        vmin / vmax: explicit colour limits (override ``center``).
        xlabel / ylabel / colorbar_label: axis texts.
        annotate: print values in cells (default: when there are at most 600 cells).
        dpi: resolution.

    Returns:
        The path written (or the file object given).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise InputError(f"heatmap needs a 2-D matrix, got shape {m.shape}")
    n_r, n_c = m.shape
    if len(row_labels) != n_r or len(col_labels) != n_c:
        raise InputError(
            f"labels do not match the matrix: {len(row_labels)} rows × {len(col_labels)} columns "
            f"for shape {m.shape}"
        )
    out: Path | BinaryIO = check_output(path) if isinstance(path, (str, os.PathLike)) else path
    rows = [_plain(x) for x in row_labels]
    cols = [_plain(x) for x in col_labels]
    fig, ax, im, cm, norm = _draw(m, rows, cols, cmap, _color_limits(m, center, vmin, vmax))
    _label_axes(ax, rows, cols, _figure_size(rows, cols), xlabel, ylabel, title)
    if annotate is None:
        annotate = n_r * n_c <= _ANNOTATE_MAX_CELLS
    if annotate:
        _annotate_cells(ax, m, cm, norm)
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.ax.tick_params(labelsize=7)
    if colorbar_label:
        cbar.set_label(colorbar_label, fontsize=8)
    _save(fig, out, dpi)
    return out


def plot_attribution(
    a: Attribution,
    path: str | os.PathLike[str] | BinaryIO,
    *,
    normalize: str | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Path | BinaryIO:
    """Write the source × target score matrix of ``a`` as a PNG heatmap.

    Rows are source tokens (prompt, then targets), columns are target steps; NaN (not
    attributable) cells are hatched grey.

    Args:
        a: the result.
        path: output ``.png`` (folder must exist), or a binary file object.
        normalize: ``None`` (raw scores, symmetric scale; default), ``"step"`` or ``"global"``.
        title: figure title (default: method, model and target function).
        dpi: resolution.
    """
    if normalize is None:
        matrix, label = np.asarray(a.scores, dtype=np.float64).T, "score"
    else:
        norm, _ = normalised_rows(a, normalize)
        matrix, label = norm.T, f"score ÷ max|score| ({normalize})"
    n_t = len(a.target_tokens)
    cols = [f"{t + 1} {display_token(tok)}" for t, tok in enumerate(a.target_tokens)]
    if title is None:
        title = f"{a.method} · {a.model_name or 'model'} · {target_fn_label(a)}"
    return heatmap_png(
        matrix,
        [display_token(t) for t in a.source_tokens],
        cols if n_t else [],
        path,
        title=title,
        xlabel="target step",
        ylabel="source token",
        colorbar_label=label,
        dpi=dpi,
    )


@register_renderer(Attribution, "png")
def attribution_png(a: Attribution, **kwargs: Any) -> bytes:
    """``a.to_png()``: the heatmap of :func:`plot_attribution` as PNG bytes."""
    buf = io.BytesIO()
    plot_attribution(a, buf, **kwargs)
    return buf.getvalue()
