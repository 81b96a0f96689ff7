"""The view model every renderer shares: token display, normalisation, palette, header facts.

Renderers read results by their fields only (no computation on the model). The terminal, the HTML
report and the PNG plots all take their colours, token labels and summary facts from here, so the
three views agree.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..result import Attribution

__all__ = [
    "verification_summary",
    "PALETTE",
    "display_token",
    "is_special_token",
    "normalised_rows",
    "aggregate_row",
    "score_rgb",
    "rgb_hex",
    "text_rgb",
    "header_facts",
    "convergence_summary",
    "format_value",
]

# Diverging palette (ColorBrewer RdBu, 9 classes): blue = negative, red = positive, near-white = 0.
PALETTE: list[str] = [
    "#2166ac",
    "#4393c3",
    "#92c5de",
    "#d1e5f0",
    "#f7f7f7",
    "#fddbc7",
    "#f4a582",
    "#d6604d",
    "#b2182b",
]
_PALETTE_RGB = [tuple(int(h[i : i + 2], 16) for i in (1, 3, 5)) for h in PALETTE]

_WHITESPACE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍", "\u00a0": "⍽"}

NORMALIZE_MODES = ("step", "global")


# --------------------------------------------------------------------------- tokens
def _escape_char(ch: str) -> str:
    """A visible stand-in for a control, format or other invisible character."""
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or (cat == "Zs" and ch != " "):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def display_token(token: str, *, whitespace: bool = True) -> str:
    """A one-line, visible form of ``token``.

    Spaces become ``·``, newlines ``↵``, tabs ``→`` (when ``whitespace`` is true; the HTML text
    view keeps real spaces), control and zero-width characters become ``\\xNN``/``\\uNNNN``
    escapes (so a token can never move the cursor or recolour a terminal), and the empty token
    is shown as ``∅``. Nothing is dropped.
    """
    if token == "":
        return "∅"
    out = []
    for ch in token:
        if ch in _WHITESPACE and (whitespace or ch not in (" ",)):
            out.append(_WHITESPACE[ch])
        else:
            out.append(_escape_char(ch))
    return "".join(out)


def is_special_token(a: Attribution, index: int) -> bool:
    """True for a leading special token such as ``<bos>``/``<|endoftext|>`` (shown dimmed)."""
    if index != 0 or a.prompt_length == 0:
        return False
    tok = a.source_tokens[0]
    bos = a.info.get("bos_token") if isinstance(a.info, dict) else None
    if isinstance(bos, str) and tok == bos:
        return True
    return len(tok) > 2 and (
        (tok[0] == "<" and tok[-1] == ">") or (tok[0] == "[" and tok[-1] == "]")
    )


# --------------------------------------------------------------------------- numbers
def _max_abs(x: np.ndarray) -> float:
    finite = np.abs(x[np.isfinite(x)])
    return float(finite.max()) if finite.size else 0.0


def normalised_rows(
    a: Attribution, normalize: str | float = "step"
) -> tuple[np.ndarray, np.ndarray]:
    """Scores scaled into ``[-1, 1]`` for display, and the scale used for each row.

    Args:
        normalize: ``"step"`` divides each target step by its own max |score|; ``"global"`` by
            the max |score| of the whole matrix; a positive number uses that fixed scale.

    Returns:
        ``(norm [T, S], scale [T])``; NaN stays NaN, values beyond the scale are clipped.
    """
    scores = np.asarray(a.scores, dtype=np.float64)
    n_t = scores.shape[0]
    if isinstance(normalize, (int, float)) and not isinstance(normalize, bool):
        if not normalize > 0 or math.isinf(normalize):
            raise ValueError(f"normalize must be a positive number, got {normalize!r}")
        scale = np.full(n_t, float(normalize))
    elif normalize == "step":
        scale = np.array([_max_abs(row) for row in scores])
    elif normalize == "global":
        scale = np.full(n_t, _max_abs(scores))
    else:
        raise ValueError(
            f"normalize must be 'step', 'global' or a positive number, got {normalize!r}"
        )
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    with np.errstate(invalid="ignore"):
        norm = np.clip(scores / safe, -1.0, 1.0)
    return norm, scale


def aggregate_row(a: Attribution) -> tuple[np.ndarray, np.ndarray, float]:
    """Sum over target steps for every source token.

    Returns:
        ``(raw [S], norm [S], scale)``: NaN for sources no step can attribute to (the last target).
    """
    scores = np.asarray(a.scores, dtype=np.float64)
    defined = np.isfinite(scores).any(axis=0)
    total = np.zeros(scores.shape[1])
    for row in scores:  # summed step by step, in the same order as the report's JavaScript
        total = total + np.where(np.isfinite(row), row, 0.0)
    raw = np.where(defined, total, np.nan)
    scale = _max_abs(raw)
    with np.errstate(invalid="ignore"):
        norm = np.clip(raw / (scale if scale > 0 else 1.0), -1.0, 1.0)
    return raw, norm, scale


# --------------------------------------------------------------------------- colours
def score_rgb(v: float) -> tuple[int, int, int] | None:
    """Palette colour for a normalised score in ``[-1, 1]`` (``None`` for NaN)."""
    if v is None or not math.isfinite(v):
        return None
    x = (max(-1.0, min(1.0, float(v))) + 1.0) / 2.0 * (len(_PALETTE_RGB) - 1)
    i = min(int(x), len(_PALETTE_RGB) - 2)
    f = x - i
    lo, hi = _PALETTE_RGB[i], _PALETTE_RGB[i + 1]
    # floor(x + 0.5) rounds halves up, as the report's JavaScript (Math.round) does.
    return tuple(math.floor(lo[k] + (hi[k] - lo[k]) * f + 0.5) for k in range(3))  # type: ignore[return-value]


def rgb_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _luminance(rgb: tuple[int, int, int]) -> float:
    def lin(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_rgb(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast against ``background``."""
    lum = _luminance(background)
    on_black = (lum + 0.05) / 0.05
    on_white = 1.05 / (lum + 0.05)
    return (17, 17, 17) if on_black >= on_white else (255, 255, 255)


# --------------------------------------------------------------------------- facts
def cell_colours(v: float) -> tuple[str, str] | None:
    """``(background, text)`` hex colours of a normalised score; ``None`` for NaN."""
    rgb = score_rgb(v)
    if rgb is None:
        return None
    return rgb_hex(rgb), rgb_hex(text_rgb(rgb))


def format_value(v: Any, digits: int = 4) -> str:
    """Compact number formatting: ``nan`` for NaN, 4 significant digits otherwise."""
    if v is None:
        return "nan"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "nan"
    if f == 0:
        return "0"
    if abs(f) >= 1e4 or abs(f) < 1e-3:
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def _find(info: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in info and info[k] is not None:
            return info[k]
    return None


def convergence_summary(a: Attribution) -> str | None:
    """One line about integrated-gradients convergence deltas in ``info``, if present."""
    info = a.info if isinstance(a.info, dict) else {}
    delta = _find(info, "convergence_delta", "convergence_deltas", "delta", "deltas")
    if delta is None:
        return None
    vals = np.asarray(delta, dtype=np.float64).reshape(-1) if not isinstance(delta, str) else None
    if vals is None or vals.size == 0:
        return str(delta)
    worst = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else float("nan")
    text = f"max |δ| {format_value(worst, 3)}"
    rel = _find(info, "relative_convergence_delta", "convergence_delta_relative", "relative_delta")
    if rel is not None:
        try:
            rv = np.asarray(rel, dtype=np.float64).reshape(-1)
            if np.isfinite(rv).any():
                text += f" ({float(np.nanmax(np.abs(rv))) * 100:.2g}% of |f(x) − f(baseline)|)"
        except (TypeError, ValueError):
            pass
    return text


def target_fn_label(a: Attribution) -> str:
    info = a.info if isinstance(a.info, dict) else {}
    name = _find(info, "target_fn", "target_function") or "logprob"
    return str(name)


def foil_label(a: Attribution) -> str | None:
    info = a.info if isinstance(a.info, dict) else {}
    foil = _find(info, "foil", "foil_text")
    if foil is None:
        return None
    if isinstance(foil, list):
        foil = "".join(str(x) for x in foil)
    return str(foil)


_HEADER_PARAMS = ("n_steps", "baseline", "replace", "reduce", "window", "n_samples", "seed")


def header_facts(a: Attribution) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for a result's header: model, method, target function, key info."""
    info = a.info if isinstance(a.info, dict) else {}
    params = info.get("method_params", info.get("params"))
    params = params if isinstance(params, dict) else {}
    facts: list[tuple[str, str]] = [
        ("model", a.model_name or "(unnamed)"),
        ("method", a.method),
        ("target function", target_fn_label(a)),
    ]
    foil = foil_label(a)
    if foil is not None:
        facts.append(("foil", repr(foil)))
    for key in _HEADER_PARAMS:
        val = info.get(key, params.get(key))
        if val is not None and not isinstance(val, (dict, list)):
            facts.append((key.replace("_", " "), str(val)))
    conv = convergence_summary(a)
    if conv is not None:
        facts.append(("convergence", conv))
    facts.append(("tokens", f"{a.prompt_length} prompt + {len(a.target_tokens)} target"))
    return facts


def eos_note(a: Attribution) -> str | None:
    """A line saying the model ended the text before the requested number of new tokens."""
    info = a.info if isinstance(a.info, dict) else {}
    if not info.get("stopped_at_eos"):
        return None
    n = len(a.target_tokens)
    return (
        f"the model ended the text (<eos>) after {n} of the {info.get('requested_new_tokens')} "
        "requested new tokens"
    )


def verification_summary(a: Attribution) -> dict[str, Any] | None:
    """What the views show of ``a.verification``: the verdict, a pass/fail mark, the reasons,
    per-step faithfulness numbers and the extra cost; None when the attribution is unverified."""
    v = a.verification
    if v is None:
        return None
    f = v.faithfulness or {}
    steps = []
    for t, tok in enumerate(a.target_tokens):
        def pick(name: str, t: int = t) -> Any:
            vals = f.get(name) or []
            return vals[t] if t < len(vals) else None

        steps.append({"step": t + 1, "token": display_token(tok),
                      "p": format_value(pick("step_p_value"), 3),
                      "effect": format_value(pick("step_effect_size"), 3),
                      "comprehensiveness": format_value(pick("comprehensiveness"), 3),
                      "sufficiency": format_value(pick("sufficiency"), 3)})
    cost = v.cost or {}
    ratio = cost.get("token_ratio")
    cost_text = (f"{cost.get('forward_passes', 0)} extra forward passes, "
                 f"{cost.get('forward_tokens', 0)} token positions, "
                 f"{cost.get('method_reruns', 0)} method rerun(s)")
    if ratio:
        cost_text += f"; {ratio:.2f}x the explanation's token positions in all"
    return {"verdict": v.verdict, "passed": v.passed, "mark": "PASS" if v.passed else "FAIL",
            "reasons": list(v.reasons), "steps": steps, "cost": cost_text,
            "json": json.dumps(v.to_dict(), indent=2, ensure_ascii=False, sort_keys=True)}
