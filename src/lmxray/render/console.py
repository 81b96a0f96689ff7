"""Terminal view of an :class:`~lmxray.result.Attribution` with rich.

One row per target step: the step's target token and target-function value, then the context it
was predicted from (prompt and earlier targets) with every token on a background coloured by its
score for that step, and the target token itself boxed at the end. A final row sums the scores
over steps. Colours come from a diverging palette (blue negative, red positive), normalised per
step by max |score| (or over the whole matrix with ``normalize="global"``); the text colour on
each cell is black or white by luminance contrast, so the view reads on dark and light terminals.
Whitespace is made visible (``·``, ``↵``, ``→``), control characters are escaped, and cells a
method could not attribute (NaN) are shown dim and uncoloured.

Example:
    >>> from lmxray.render.console import show_attribution
    >>> show_attribution(a, normalize="global")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..result import Attribution, register_renderer
from ._view import (
    aggregate_row,
    cell_colours,
    display_token,
    eos_note,
    format_value,
    header_facts,
    is_special_token,
    normalised_rows,
    rgb_hex,
    score_rgb,
    verification_summary,
)

__all__ = ["show_attribution", "attribution_renderables", "attribution_text", "DEFAULT_MAX_STEPS"]

DEFAULT_MAX_STEPS = 20

_NAN_STYLE = Style(dim=True)
_SPECIAL_STYLE = Style(dim=True, italic=True)
_TARGET_STYLE = Style(bold=True, reverse=True)


def _cell_style(v: float) -> Style:
    colours = cell_colours(v)
    if colours is None:
        return _NAN_STYLE
    return Style(bgcolor=colours[0], color=colours[1])


def _token_line(
    a: Attribution, norm_row: Sequence[float] | np.ndarray, upto: int, target_index: int | None
) -> Text:
    """Source tokens ``[0, upto)`` coloured by ``norm_row``, then the target token (if any)."""
    text = Text(no_wrap=False, overflow="fold")
    for s in range(upto):
        if s:
            text.append(" ")
        label = display_token(a.source_tokens[s])
        v = norm_row[s]
        style = _cell_style(v)
        if is_special_token(a, s):
            style = style + _SPECIAL_STYLE if math.isfinite(v) else _SPECIAL_STYLE
        text.append(label, style=style)
    if target_index is not None:
        if upto:
            text.append(" ▸ ", style="dim")
        text.append(display_token(a.source_tokens[target_index]), style=_TARGET_STYLE)
    return text


class _Packed:
    """Segments laid out left to right, wrapped between segments (never inside one)."""

    def __init__(self, segments: list[Text], sep: str = "  ·  ", prefix: Text | None = None):
        self.segments, self.sep, self.prefix = segments, sep, prefix

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Text]:
        width = options.max_width
        line = self.prefix.copy() if self.prefix is not None else Text()
        for seg in self.segments:
            if line.cell_len and line.cell_len + len(self.sep) + seg.cell_len > width:
                yield line
                line = Text()
            elif line.cell_len:
                line.append(self.sep, style="dim")
            line.append_text(seg)
        if line.cell_len:
            yield line


def _legend(normalize: str | float) -> _Packed:
    bar = Text()
    bar.append("−1 ", style="dim")
    for i in range(11):
        v = -1.0 + i * 0.2
        bar.append("  ", style=Style(bgcolor=rgb_hex(score_rgb(v))))  # type: ignore[arg-type]
    bar.append(" +1", style="dim")
    if normalize == "step":
        how = "score ÷ max|score| of its step"
    elif normalize == "global":
        how = "score ÷ max|score| of all steps"
    else:
        how = f"score ÷ {format_value(normalize)}"
    nan = Text("dim", style=_NAN_STYLE) + Text(" not attributable (NaN)", style="dim")
    tgt = Text("▸ ", style="dim") + Text("x", style=_TARGET_STYLE) + Text(" target", style="dim")
    keys = [Text(k, style="dim") for k in ("· space", "↵ newline", "→ tab", "\\xNN control")]
    return _Packed([bar, Text(how, style="dim"), nan, tgt, *keys], sep="   ")


def _header(a: Attribution) -> _Packed:
    segments = []
    for label, value in header_facts(a):
        seg = Text(f"{label} ", style="dim")
        seg.append(value, style="bold" if label == "method" else "")
        segments.append(seg)
    return _Packed(segments, prefix=Text("lmxray attribution", style="bold"))


def _answer(a: Attribution) -> Text:
    generated = isinstance(a.info, dict) and a.info.get("generated") is True
    text = Text()
    text.append("prompt ", style="dim")
    text.append(repr("".join(a.prompt_tokens)))
    text.append("  →  generated " if generated else "  →  target ", style="dim")
    text.append(repr("".join(a.target_tokens)), style="bold")
    return text


def _select_steps(
    n_targets: int, steps: Iterable[int] | None, max_steps: int | None
) -> tuple[list[int], int]:
    if steps is None:
        chosen = list(range(n_targets))
    else:
        chosen = []
        for t in steps:
            t = int(t)
            if not -n_targets <= t < n_targets:
                raise ValueError(f"step {t} is out of range for {n_targets} target steps")
            chosen.append(t % n_targets)
    hidden = 0
    if max_steps is not None and len(chosen) > max_steps:
        hidden = len(chosen) - max_steps
        chosen = chosen[:max_steps]
    return chosen, hidden


@register_renderer(Attribution, "console")
def attribution_renderables(
    a: Attribution,
    *,
    steps: Iterable[int] | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    normalize: str | float = "step",
    header: bool = True,
) -> Iterator[RenderableType]:
    """Yield the rich renderables of the terminal view (used by ``rich.print(a)``).

    Args:
        a: the result to show.
        steps: target steps to show (indices; negative counts from the end). Default: all.
        max_steps: show at most this many steps; the rest are announced, never silently dropped.
        normalize: ``"step"`` (default), ``"global"``, or a positive number (fixed scale).
        header: include the header, answer and legend lines.
    """
    norm, scale = normalised_rows(a, normalize)
    chosen, hidden = _select_steps(len(a.target_tokens), steps, max_steps)
    fn_name = header_facts(a)[2][1]

    if header:
        yield _header(a)
        yield _answer(a)
        note = eos_note(a)
        if note is not None:
            yield Text(note, style="dim")

    table = Table(box=None, padding=(0, 1), show_edge=False, expand=False, pad_edge=False)
    table.add_column("step", justify="right", style="dim", no_wrap=True)
    table.add_column(Text(fn_name), justify="right", no_wrap=True)
    table.add_column("max|s|", justify="right", style="dim", no_wrap=True)
    table.add_column("context ▸ target", ratio=1, overflow="fold")
    p = a.prompt_length
    for t in chosen:
        table.add_row(
            str(t + 1),
            format_value(a.target_scores[t]),
            format_value(scale[t], 2),
            _token_line(a, norm[t], p + t, p + t),
        )
    if hidden:
        table.add_row(
            "…",
            "",
            "",
            Text(
                f"{hidden} more step(s) not shown (pass steps= or max_steps=None)",
                style="dim italic",
            ),
        )
    if len(a.target_tokens) > 1:
        raw, agg_norm, agg_scale = aggregate_row(a)
        last = len(a.source_tokens) - 1
        table.add_row(
            "Σ",
            format_value(float(sum(float(x) for x in a.target_scores if math.isfinite(x)))),
            format_value(agg_scale, 2),
            _token_line(a, agg_norm, last, None),
            style="bold",
        )
    yield table
    if header:
        yield _legend(normalize)
    yield from _verification(a)


def _verification(a: Attribution) -> Iterator[RenderableType]:
    """The verdict and its reasons (nothing for an unverified attribution)."""
    v = verification_summary(a)
    if v is None:
        return
    line = Text("verification  ", style="bold")
    line.append(f" {v['mark']} ", style="bold white on green" if v["passed"] else "bold white on red")
    line.append(f"  {v['verdict']}", style="bold")
    yield line
    for r in v["reasons"]:
        yield Text(f"  · {r}")
    yield Text(f"  cost: {v['cost']}", style="dim")


def show_attribution(
    a: Attribution,
    console: Console | None = None,
    steps: Iterable[int] | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    normalize: str | float = "step",
    **kwargs: Any,
) -> None:
    """Print the terminal heatmap of ``a``.

    Args:
        a: the result.
        console: where to print (default: a new rich Console on stdout).
        steps: which target steps to show (default all, up to ``max_steps``).
        max_steps: cap on the number of steps shown; hidden steps are announced.
        normalize: ``"step"`` | ``"global"`` | a positive number. See :func:`attribution_renderables`.
        **kwargs: passed to :func:`attribution_renderables` (``header=False``).
    """
    console = console or Console()
    console.print(
        Group(
            *attribution_renderables(
                a, steps=steps, max_steps=max_steps, normalize=normalize, **kwargs
            )
        )
    )


def attribution_text(
    a: Attribution,
    steps: Iterable[int] | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    header: bool = True,
) -> str:
    """The terminal view as plain text with the numbers (for pipes and files, where colours
    are lost): per step, the target token and its value, then every source token it reads with
    its score.
    """
    chosen, hidden = _select_steps(len(a.target_tokens), steps, max_steps)
    facts = header_facts(a)
    lines: list[str] = []
    if header:
        lines.append("lmxray attribution  ·  " + "  ·  ".join(f"{k} {v}" for k, v in facts))
        lines.append(_answer(a).plain)
        note = eos_note(a)
        if note is not None:
            lines.append(note)
    p = a.prompt_length
    width = max((len(display_token(t)) for t in a.source_tokens), default=5)
    width = min(max(width, 5), 30)
    for t in chosen:
        lines.append(
            f"step {t + 1}  target {display_token(a.target_tokens[t])}  "
            f"{facts[2][1]} {format_value(a.target_scores[t])}"
        )
        lines.append(f"  {'pos':>4}  {'token':<{width}}  score")
        for s in range(p + t):
            tok = display_token(a.source_tokens[s])
            lines.append(f"  {s:>4}  {tok:<{width}}  {format_value(a.scores[t, s])}")
    if hidden:
        lines.append(f"{hidden} more step(s) not shown (--max-steps)")
    if len(a.target_tokens) > 1:
        raw, _, _ = aggregate_row(a)
        total = sum(float(x) for x in a.target_scores if math.isfinite(x))
        lines.append(f"Σ all steps  {facts[2][1]} {format_value(total)}")
        lines.append(f"  {'pos':>4}  {'token':<{width}}  score")
        for s in range(len(a.source_tokens) - 1):
            tok = display_token(a.source_tokens[s])
            lines.append(f"  {s:>4}  {tok:<{width}}  {format_value(raw[s])}")
    v = verification_summary(a)
    if v is not None:
        lines.append(f"verification {v['mark']}  {v['verdict']}")
        lines.extend(f"  - {r}" for r in v["reasons"])
        lines.append(f"  cost: {v['cost']}")
    return "\n".join(lines) + "\n"
