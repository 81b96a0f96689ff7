"""Context attribution: which sentences, paragraphs, documents or chat messages of a prompt
support a generated answer.

Sources partition the context (the fixed query after it, chat template text between messages and
special tokens are never removed). The value of a set of sources is the total log-probability of
the target span, teacher forced, when only those sources are present (absent ones are deleted,
``replace="remove"``, as ContextCite does, or replaced by a baseline token). Methods:

- ``"ablation"`` (ContextCite, Cohen-Wang et al. 2024): ``n_ablations`` random subsets (each
  source kept with probability ``keep_prob``) and a sparse linear surrogate (scikit-learn
  ``Lasso`` on standardised masks, ``alpha``); a source's score is its surrogate weight, the
  log-probability the target gains when the source is present.
- ``"loo"``: exact leave-one-out, ``v(all) - v(all but s)``.
- ``"shapley"``: exact Shapley values over the sources (all ``2^n`` subsets, at most 16 sources),
  solved with :func:`lmxray.attribution.shapley.constrained_wls`.

Every subset of every method is scored in one call of the shared engine (batched, duplicates
once, shared prefixes from the KV cache: a subset keeps the context up to its first removed
source, so long stems are computed once).

Quality metrics (``metrics=True``), as in the ContextCite paper:

- ``topk_drop[k]``: log-probability lost when the ``k`` top-scored sources are removed (higher
  is better: the method found the sources the answer rests on);
- ``lds``: the linear datamodeling score, the Spearman correlation between the method's linear
  prediction and the true value on ``n_heldout`` fresh random ablations.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..model import Model
from ..result import Result
from ..targets import resolve_target_fn
from ._games import build_games, evaluate, segment_owners
from .base import Context, Request
from .shapley import constrained_wls, shapley_kernel_weights

__all__ = [
    "ContextAttribution", "attribute_context", "split_sources", "SOURCE_KINDS", "CONTEXT_METHODS",
    "MAX_SHAPLEY_SOURCES",
]

SOURCE_KINDS = ("sentence", "paragraph", "document", "message")
CONTEXT_METHODS = ("ablation", "loo", "shapley")
MAX_SHAPLEY_SOURCES = 16
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
_DOCUMENT_END = re.compile(r"\n[ \t]*\n[ \t]*\n\s*|\n(?:-{3,}|={3,})[ \t]*\n\s*")


@dataclass
class ContextAttribution(Result):
    """Scores of the sources of a prompt for a target span.

    Attributes:
        text: the whole prompt; ``spans``: ``(start, end)`` characters of each source in it.
        target: the explained continuation; ``kind``: how the sources were cut.
        scores: ``[n_sources]`` (log-probability units; higher = more support).
        full_logprob: the target's total log-probability with every source present.
        metrics: ``{"topk_drop": {k: drop}, "lds": rho}`` when computed.
    """

    FORMAT: ClassVar[str] = "lmxray.context_attribution/1"

    text: str
    target: str
    spans: list[tuple[int, int]]
    scores: np.ndarray
    method: str
    kind: str
    full_logprob: float
    model_name: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    def ranking(self) -> list[int]:
        """Source indices, best supported first (ties: earlier first)."""
        return sorted(range(len(self.spans)), key=lambda i: (-float(self.scores[i]), i))

    def top(self, k: int = 3) -> list[tuple[int, float, str]]:
        """``(index, score, text)`` of the ``k`` best-supported sources."""
        src = self.sources
        return [(i, float(self.scores[i]), src[i]) for i in self.ranking()[:k]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT, "text": self.text, "target": self.target,
            "spans": [list(s) for s in self.spans], "scores": [float(x) for x in self.scores],
            "method": self.method, "kind": self.kind, "full_logprob": float(self.full_logprob),
            "model": self.model_name,
            "metrics": {**self.metrics, "topk_drop": {
                str(k): v for k, v in self.metrics.get("topk_drop", {}).items()
            }} if self.metrics else {},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextAttribution:
        metrics = dict(data.get("metrics") or {})
        if "topk_drop" in metrics:
            metrics["topk_drop"] = {int(k): v for k, v in metrics["topk_drop"].items()}
        return cls(
            text=data["text"], target=data["target"],
            spans=[(int(a), int(b)) for a, b in data["spans"]],
            scores=np.asarray(data["scores"], dtype=np.float64), method=data["method"],
            kind=data["kind"], full_logprob=float(data["full_logprob"]),
            model_name=data.get("model", ""), metrics=metrics, info=dict(data.get("info") or {}),
        )

    def __repr__(self) -> str:
        best = self.top(1)
        head = f"{best[0][2][:40]!r} ({best[0][1]:+.3f})" if best else "-"
        return (f"ContextAttribution({len(self.spans)} {self.kind} sources, method={self.method!r}, "
                f"top={head})")


# ------------------------------------------------------------------------------ sources
def split_sources(text: str, kind: str = "sentence") -> list[tuple[int, int]]:
    """``(start, end)`` character spans that partition ``text`` into sentences, paragraphs
    (blank lines) or documents (two blank lines or a ``---`` / ``===`` line); the whitespace after
    a unit belongs to it."""
    pattern = {"sentence": _SENTENCE_END, "paragraph": _PARAGRAPH_END, "document": _DOCUMENT_END}
    if kind not in pattern:
        raise InputError(
            f"unknown source kind {kind!r}; use sentence, paragraph, document (or message for a "
            "chat), or give the sources as a list of strings"
        )
    cuts = [m.end() for m in pattern[kind].finditer(text) if 0 < m.end() < len(text)]
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _check_partition(context: str, sources: Sequence[Any]) -> list[tuple[int, int]]:
    """Spans of user-given sources (strings whose concatenation is the context, or contiguous
    ``(start, end)`` character spans covering it)."""
    if not sources:
        raise InputError("sources is empty; give sentence, paragraph, document or a list of strings")
    if all(isinstance(s, str) for s in sources):
        joined = "".join(sources)
        if joined != context:
            at = next((i for i, (a, b) in enumerate(zip(joined, context, strict=False)) if a != b),
                      min(len(joined), len(context)))
            raise InputError(
                f"the sources do not partition the context: their concatenation ({len(joined)} "
                f"characters) differs from it ({len(context)} characters) at character {at}; "
                "give strings that join to the context exactly"
            )
        bounds = np.cumsum([0, *[len(s) for s in sources]]).tolist()
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    else:
        try:
            spans = [(int(a), int(b)) for a, b in sources]
        except (TypeError, ValueError):
            raise InputError("sources must be a kind name, a list of strings or of (start, end) "
                             "character spans") from None
        prev = 0
        for a, b in spans:
            if a != prev or b <= a:
                raise InputError(
                    f"the sources do not partition the context: span ({a}, {b}) should start at "
                    f"character {prev} and be non-empty; give contiguous spans covering 0..{len(context)}"
                )
            prev = b
        if prev != len(context):
            raise InputError(
                f"the sources do not partition the context: they end at character {prev}, the "
                f"context at {len(context)}; give contiguous spans covering 0..{len(context)}"
            )
    for k, (a, b) in enumerate(spans):
        if a == b or not context[a:b].strip():
            raise InputError(f"source {k} is empty or only whitespace; merge it with a neighbour")
    return [(int(a), int(b)) for a, b in spans]


def _segments(model: Model, context: Any, query: str, sources: Any) -> tuple[list[str], list[int], str]:
    """Text segments of the whole prompt, the index of each source among them, and the kind."""
    if isinstance(context, list) and context and all(isinstance(m, dict) for m in context):
        if sources not in ("message", "sentence") and not isinstance(sources, str):
            raise InputError("for a chat, sources must be 'message'")
        text = model.chat(context) + query
        segs: list[str] = []
        src: list[int] = []
        pos = 0
        for m in context:
            content = str(m.get("content", ""))
            at = text.find(content, pos) if content.strip() else -1
            if at < 0:
                raise InputError("a chat message is empty or not found in the chat template's text")
            segs.append(text[pos:at])
            src.append(len(segs))
            segs.append(content)
            pos = at + len(content)
        segs.append(text[pos:])
        return segs, src, "message"
    if not isinstance(context, str) or not context.strip():
        raise InputError("the context is empty; give the text (or chat messages) to attribute to")
    if isinstance(sources, str):
        if sources == "message":
            raise InputError("sources='message' needs the context as a list of chat messages")
        spans, kind = split_sources(context, sources), sources
    else:
        spans, kind = _check_partition(context, sources), "custom"
    return [context[a:b] for a, b in spans] + [query], list(range(len(spans))), kind


# ------------------------------------------------------------------------------ scoring
class _Scorer:
    """Values of source subsets: total target log-probability with only those sources present."""

    def __init__(self, model: Model, segs: list[str], src: list[int], target: Any,
                 max_new_tokens: int, replace: str, baseline: Any, ctx: Context) -> None:
        ids, owner = segment_owners(model, segs)
        model.check_length(len(ids) + 1)
        if target is None:
            t_ids = model.generate_ids(ids, max_new_tokens)
            if not t_ids:
                raise InputError("the model generated nothing to explain (EOS first); pass a target")
        else:
            if not isinstance(target, str) or not target:
                raise InputError("target must be a non-empty string (or None to generate)")
            t_ids = model.encode_target(target)
        model.check_length(len(ids) + len(t_ids))
        self.target = model.tokenizer.decode(t_ids) if target is None else target
        spans = []
        for k, s in enumerate(src):
            pos = [i for i, o in enumerate(owner) if o == s]
            if not pos:
                raise InputError(f"source {k} ({segs[s][:30]!r}) has no token of its own; merge "
                                 "it with a neighbour")
            spans.append((pos[0], pos[-1] + 1))
        req = Request(ids, t_ids)
        self.game = build_games(model, [req], [spans], replace, baseline, "prompt")[0]
        first = [int(g[0]) for g in self.game.groups]
        self.player = np.array([first.index(a) for a, _ in spans], dtype=np.int64)
        self.model, self.ctx = model, ctx
        self.token_spans = spans
        self.stats: dict[str, int] = {}

    def values(self, masks: np.ndarray) -> tuple[np.ndarray, float]:
        """``v(mask)`` for ``masks [K, n]`` (bool), and ``v(all)``."""
        z = np.ones((len(masks), self.game.n_players), dtype=bool)
        z[:, self.player] = masks
        vals, full, stats = evaluate(self.model, [self.game], [z], self.ctx)
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0) + int(v)
        return vals[0].sum(axis=1), float(full[0].sum())


def _lasso(masks: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """ContextCite's surrogate: Lasso on standardised masks, weights mapped back to 0/1 masks."""
    from sklearn.linear_model import Lasso  # noqa: PLC0415 - optional heavy import, on use

    x = masks.astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    fit = Lasso(alpha=alpha, random_state=0, fit_intercept=True).fit((x - mean) / scale, y)
    w = fit.coef_ / scale
    return w, float(fit.intercept_ - (mean / scale) @ fit.coef_)


def _random_masks(rng: np.random.Generator, n_rows: int, n: int, keep_prob: float) -> np.ndarray:
    return rng.random((n_rows, n)) < keep_prob


def _method_masks(method: str, n: int, n_ablations: int, keep_prob: float,
                  rng: np.random.Generator) -> np.ndarray:
    if method == "ablation":
        return _random_masks(rng, n_ablations, n, keep_prob)
    if method == "loo":
        return ~np.eye(n, dtype=bool)
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


def _solve(method: str, masks: np.ndarray, y: np.ndarray, full: float,
           alpha: float) -> tuple[np.ndarray, float]:
    """Scores and the intercept of the linear prediction ``intercept + scores . mask``."""
    n = masks.shape[1]
    if method == "ablation":
        return _lasso(masks, y, alpha)
    if method == "loo":
        scores = full - y
        return scores, full - float(scores.sum())
    sizes = masks.sum(axis=1)
    empty = float(y[sizes == 0][0])
    inner = (sizes > 0) & (sizes < n)
    if n == 1:
        return np.array([full - empty]), empty
    w = shapley_kernel_weights(n, sizes[inner])
    phi = constrained_wls(masks[inner].astype(np.float64), y[inner] - empty, w, full - empty)
    return phi, empty


def _metrics(scorer: _Scorer, scores: np.ndarray, intercept: float, held: np.ndarray,
             held_y: np.ndarray, full: float, top_k: Sequence[int]) -> dict[str, Any]:
    from scipy.stats import spearmanr  # noqa: PLC0415 - optional heavy import, on use

    n = len(scores)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    ks = [k for k in top_k if 0 < k <= n]
    masks = np.ones((len(ks), n), dtype=bool)
    for row, k in enumerate(ks):
        masks[row, order[:k]] = False
    drops: dict[int, float] = {}
    if ks:
        y, _ = scorer.values(masks)
        drops = {k: float(full - v) for k, v in zip(ks, y, strict=True)}
    pred = intercept + held.astype(np.float64) @ scores
    lds = float("nan")
    if len(held_y) > 2 and np.ptp(held_y) > 0 and np.ptp(pred) > 0:
        lds = float(spearmanr(pred, held_y).statistic)
    return {"topk_drop": drops, "lds": None if math.isnan(lds) else lds}


def _check_args(method: str, n: int, n_ablations: int, keep_prob: float, n_heldout: int) -> None:
    if method not in CONTEXT_METHODS:
        raise InputError(f"unknown context method {method!r}; use {', '.join(CONTEXT_METHODS)}")
    for name, v in (("n_ablations", n_ablations), ("n_heldout", n_heldout)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "n_ablations" else 0):
            raise InputError(f"{name} must be a whole number >= {1 if name == 'n_ablations' else 0}, got {v!r}")
    if not isinstance(keep_prob, int | float) or not 0 < keep_prob < 1:
        raise InputError(f"keep_prob must be between 0 and 1 (exclusive), got {keep_prob!r}")
    if method == "shapley" and n > MAX_SHAPLEY_SOURCES:
        raise InputError(
            f"exact Shapley over {n} sources needs 2^{n} evaluations (at most "
            f"{MAX_SHAPLEY_SOURCES} sources); use method='ablation' or coarser sources"
        )


def attribute_context(
    model: Model,
    context: str | list[dict[str, str]],
    *,
    query: str = "",
    target: str | None = None,
    sources: str | Sequence[Any] = "sentence",
    method: str = "ablation",
    n_ablations: int = 64,
    keep_prob: float = 0.5,
    alpha: float = 0.01,
    seed: int = 0,
    metrics: bool = True,
    n_heldout: int = 32,
    top_k: Sequence[int] = (1, 3, 5),
    replace: str = "remove",
    baseline: Any = "auto",
    max_new_tokens: int = 20,
    internal_batch_size: int | None = None,
    memory_budget: int | None = None,
) -> ContextAttribution:
    """Which sources of ``context`` support ``target`` (generated greedily when ``None``).

    Args:
        context: the text the sources partition, or chat messages (``sources="message"``).
        query: fixed text after the context (never removed), e.g. the question.
        sources: ``"sentence"``, ``"paragraph"``, ``"document"``, ``"message"``, a list of strings
            that join to the context, or contiguous ``(start, end)`` character spans covering it.
        method: ``"ablation"`` (ContextCite), ``"loo"`` or ``"shapley"`` (see the module doc).

    Example:
        >>> r = attribute_context(m, doc, query="\\nQ: Who won?\\nA:", target=" Ann")  # doctest: +SKIP
        >>> r.top(3); r.metrics["topk_drop"][1]; r.show()  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    segs, src, kind = _segments(model, context, query, sources)
    _check_args(method, len(src), n_ablations, keep_prob, n_heldout)
    ctx = Context(resolve_target_fn("logprob"), internal_batch_size, memory_budget)
    scorer = _Scorer(model, segs, src, target, max_new_tokens, replace, baseline, ctx)
    rng = np.random.default_rng(seed)
    masks = _method_masks(method, len(src), n_ablations, keep_prob, rng)
    held = _random_masks(np.random.default_rng([seed, 1]), n_heldout if metrics else 0,
                         len(src), keep_prob)
    y, full = scorer.values(np.concatenate([masks, held]))
    scores, intercept = _solve(method, masks, y[: len(masks)], full, alpha)
    seconds = time.perf_counter() - t0
    mets = _metrics(scorer, scores, intercept, held, y[len(masks):], full, top_k) if metrics else {}
    text = "".join(segs)
    bounds = np.cumsum([0, *[len(s) for s in segs]]).tolist()
    info = {
        "n_evaluations": int(len(masks)), "intercept": intercept, "seconds": round(seconds, 4),
        "replace": replace, "token_spans": scorer.token_spans, "forward_tokens": scorer.stats,
        "seed": seed, **({"keep_prob": keep_prob, "alpha": alpha} if method == "ablation" else {}),
    }
    return ContextAttribution(
        text=text, target=scorer.target, spans=[(bounds[s], bounds[s + 1]) for s in src],
        scores=np.asarray(scores, dtype=np.float64), method=method, kind=kind, full_logprob=full,
        model_name=model.name, metrics=mets, info=info,
    )
