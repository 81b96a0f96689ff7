"""Views of the :mod:`lmxray.improve` results: fixed-width text tables (``table()``, what the CLI
prints and ``docs/improve.md`` quotes), the terminal view (the same table), and PNG figures
(shortcut scores; steering flip rates and fluency).

Every table goes through :func:`format_table` (floats with 3 decimals, first column left-aligned).
In the steering figure each layer has its own colour, marker and dash pattern, is nudged
sideways by a small offset, and earlier layers are drawn wider under later ones, so lines with
equal values (several layers that flip nothing, or all) stay visible; the legend names them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from rich.text import Text

from ..improve.distill import DistillReport
from ..improve.memit import BatchEditResult
from ..improve.results import (
    CONDITIONS,
    AmplifyResult,
    EditReport,
    EditResult,
    FinetuneResult,
    ImproveResult,
    RRRReport,
    ShortcutReport,
    SteeringSweep,
    SteeringVector,
)
from ..result import register_renderer

__all__ = ["format_table", "shortcut_png", "steering_png"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> str:
    """Fixed-width text table (floats with 3 decimals); what the CLI prints and docs quote."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if not np.isfinite(v) else f"{float(v):.3f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
        for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [title] if title else []
    lines.append(line([str(h) for h in headers]))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(r) for r in body)
    return "\n".join(lines)


# --------------------------------------------------------------------------- text tables
@register_renderer(ShortcutReport, "text")
def shortcut_table(r: ShortcutReport, k: int = 10) -> str:
    """The top ``k`` shortcut candidates."""
    head = ["rank", "token", "count", "attr", "rationale", "assoc raw", "assoc",
            "explained by", "label", "p_label", "score"]
    body = [
        [i + 1, repr(row["token"]), row["count"], row["attr"], row["rationale"],
         row.get("assoc_raw", row["assoc"]), row["assoc"],
         repr(row["explained_by"]) if row.get("explained_by") else "-",
         row["label"], row["p_label"], row["score"]]
        for i, row in enumerate(r.rows[:k])
    ]
    labels = ", ".join(f"{k2} {v}" for k2, v in r.labels.items())
    text = format_table(head, body, title=f"shortcut candidates ({r.n_examples} examples, "
                        f"{r.method}; labels {labels})")
    if not r.has_rationales:
        text += "\nnote: no rationales were given, so real evidence ranks with the shortcuts"
    return text


@register_renderer(FinetuneResult, "text")
def finetune_table(r: FinetuneResult) -> str:
    """The logged training history (step, cross-entropy, penalty)."""
    body = [[int(h["step"]), float(h["ce"]), float(h["penalty"])] for h in r.history]
    return format_table(
        ["step", "ce", "penalty"], body,
        title=f"fine-tune of {r.model_name or 'a model'}: {r.n_examples} examples "
        f"({r.n_marked} with marked tokens), lambda {r.config.lam:g}, {r.config.steps} steps",
    )


@register_renderer(RRRReport, "text")
def rrr_table(r: RRRReport) -> str:
    """Accuracy in distribution, on the shift split and on its conflicting examples."""
    head = ["model", "in-distribution", "shift", "shift conflict", "ID - shift"]
    body = [
        [k, v["in-distribution"], v["shift"], v["shift conflict"],
         v["in-distribution"] - v["shift"]]
        for k, v in r.rows.items()
    ]
    first = next(iter(r.rows.values()))
    n = (f"{int(first['n_id'])} test / {int(first['n_shift'])} shift / "
         f"{int(first['n_conflict'])} conflict")
    return format_table(head, body, title=f"sentiment accuracy ({n} examples); penalised: "
                        f"{', '.join(r.penalised)}; shortcut label {r.shortcut_label!r}")


@register_renderer(SteeringVector, "text")
def steering_vector_table(v: SteeringVector) -> str:
    """Where the vector applies and its size."""
    body = [[v.site_name, v.norm, v.resid_norm, v.n_pos, v.n_neg, str(v.projected)]]
    return format_table(["site", "norm", "resid norm", "n_pos", "n_neg", "projected"], body,
                        title=f"steering vector of {v.model_name or 'a model'}")


@register_renderer(SteeringSweep, "text")
def steering_table(r: SteeringSweep) -> str:
    """Flip rate and LM loss per layer (rows) and coefficient (columns)."""
    head = ["layer", *[f"c={c:g}" for c in r.coefs]]
    rows = [[f"{ly} flip", *[float(v) for v in r.flip[i]]] for i, ly in enumerate(r.layers)]
    rows += [[f"{ly} loss", *[float(v) for v in r.loss[i]]] for i, ly in enumerate(r.layers)]
    title = (
        f"steering {r.from_label!r} -> {r.to_label!r} at {r.site}: fraction flipped "
        f"({r.n_eligible} prompts) and LM loss on {r.n_fluency} held-out texts "
        f"(unsteered {r.loss_unsteered:.3f} nats/token)"
    )
    return format_table(head, rows, title=title)


_EDIT_METRICS = ("efficacy", "paraphrase", "specificity", "consistency", "fluency")


@register_renderer(EditReport, "text")
def edits_table(r: EditReport) -> str:
    """Efficacy, paraphrase, specificity (and consistency, fluency where measured) per editor."""
    cols = [m for m in _EDIT_METRICS if any(m in v for v in r.rows.values())]
    body = [[k, int(v["n"]), *(v.get(m, float("nan")) for m in cols)] for k, v in r.rows.items()]
    aie = ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(r.aie))
    what = (f"MEMIT, {body[0][1]} edits at once (layers {r.info.get('layers')})"
            if r.info.get("method") == "memit" else "ROME rank-one edits, each alone")
    return format_table(
        ["editor", "edits", *cols], body,
        title=f"{what} (located layer {r.layer}; MLP AIE at the last subject token: {aie})",
    )


@register_renderer(BatchEditResult, "text")
def batch_edit_table(r: BatchEditResult) -> str:
    """Each request's greedy answer before and after the MEMIT batch."""
    body = [[x["prompt"], x["target"], x["before"], x["after"]] for x in r.rows]
    return format_table(["prompt", "target", "before", "after"], body,
                        title=f"MEMIT batch of {len(r.rows)} edits at layers {r.layers}")


@register_renderer(DistillReport, "text")
def distill_table(r: DistillReport) -> str:
    """Label accuracy (mean ± sd over seeds) per data fraction and student."""
    summ = r.summary()
    body = [[f"{f:.0%}", *(f"{summ[v][i][0]:.3f} ± {summ[v][i][1]:.3f}" for v in summ)]
            for i, f in enumerate(r.fractions)]
    return format_table(["data", *summ], body,
                        title=f"Rationale distillation: student label accuracy on {r.n_test} "
                        f"held-out items, seeds {r.seeds} ({r.n_train} examples at 100%)")


@register_renderer(EditResult, "text")
def edit_line(r: EditResult) -> str:
    """One line: the prompt's greedy answer before and after the edit."""
    p = r.info.get("p_target", float("nan"))
    return f"layer {r.layer}: {r.prompt}[{r.before}] -> [{r.after}] (optimised P(target) {p:.3f})"


@register_renderer(AmplifyResult, "text")
def amplify_table(r: AmplifyResult) -> str:
    """Accuracy per prompting condition."""
    body = [[c, r.accuracy[c], r.n] for c in CONDITIONS if c in r.accuracy]
    return format_table(
        ["condition", "accuracy", "queries"], body,
        title=f"AMPLIFY on {r.n} queries (target {r.model_name}, proxy {r.proxy_name}, "
        f"{len(r.demos)} demonstrations)",
    )


@register_renderer(ImproveResult, "console")
def improve_console(r: ImproveResult, **kwargs: Any) -> Iterable[Any]:
    """The text table, unstyled."""
    return [Text(r.table(**kwargs))]


# --------------------------------------------------------------------------- figures
def _figure_bytes(fig: Any, dpi: int = 110) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@register_renderer(ShortcutReport, "png")
def shortcut_png(r: ShortcutReport, k: int = 10) -> bytes:
    """Bar chart of the top ``k`` scores."""
    plt = _pyplot()
    rows = r.rows[:k][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(rows), 3) + 1))
    ax.barh([repr(row["token"]) for row in rows], [row["score"] for row in rows], color="#8e44ad")
    ax.set_xlabel("shortcut score = attr x assoc x (1 - rationale)")
    ax.set_title(f"shortcut candidates · {r.method} · {r.n_examples} examples")
    return _figure_bytes(fig)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DASHES = ("-", "--", "-.", ":")


def _line_styles(n: int, span: float) -> list[dict[str, Any]]:
    """Per line: colour, marker, dash pattern and a sideways offset (a fraction of ``span``),
    so that lines with equal values do not hide each other."""
    offsets = (np.arange(n) - (n - 1) / 2) * (0.012 * span if n > 1 else 0.0)
    return [
        {"marker": _MARKERS[i % len(_MARKERS)], "ls": _DASHES[i % len(_DASHES)],
         "color": f"C{i % 10}", "offset": float(offsets[i]),
         # earlier lines are drawn wider and with larger markers, so where lines coincide
         # (flat stretches) each one still shows around the ones drawn over it
         "lw": 1.2 + 1.3 * (n - 1 - i), "ms": 5.0 + 2.0 * (n - 1 - i)}
        for i in range(n)
    ]


@register_renderer(SteeringSweep, "png")
def steering_png(r: SteeringSweep) -> bytes:
    """Flip rate vs coefficient (one line per layer) and the fluency loss beside it; every
    layer's line is visible (own marker, dashes and a small sideways offset; see the legend)."""
    plt = _pyplot()
    coefs = np.asarray(r.coefs, dtype=float)
    span = float(coefs.max() - coefs.min()) if len(coefs) > 1 else 1.0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (i, ly), st in zip(enumerate(r.layers), _line_styles(len(r.layers), span), strict=True):
        x = coefs + st["offset"]
        kw = dict(marker=st["marker"], ls=st["ls"], color=st["color"], lw=st["lw"],
                  ms=st["ms"], label=f"layer {ly}")
        a1.plot(x, r.flip[i], **kw)
        a2.plot(x, r.loss[i], **kw)
    if np.isfinite(r.loss_unsteered):
        a2.axhline(r.loss_unsteered, color="k", ls=":", lw=1, label="unsteered")
    a1.set_xlabel("coefficient (layers nudged sideways to stay visible)")
    a1.set_ylabel(f"fraction flipped to {r.to_label.strip()!r}")
    a1.set_ylim(-0.04, 1.04)
    a2.set_xlabel("coefficient")
    a2.set_ylabel("LM loss on held-out text (nats/token)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.suptitle(f"steering {r.site}: {r.from_label.strip()} -> {r.to_label.strip()}")
    return _figure_bytes(fig)
