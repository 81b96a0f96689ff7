"""Faithfulness: does removing what an explanation calls important change the model's output?

Every metric is computed per target step ``t`` of an :class:`~lmxray.result.Attribution`, from
step ``t``'s own scores over the sources it reads (prompt and earlier target tokens, special
tokens such as BOS left in place), and averaged over the steps of a generation. ``p`` is the
probability of the step's target token (``space="prob"``, default, as in ERASER) or its
log-probability (``space="logprob"``); ``x \\ R`` is the input with positions ``R`` removed
(``removal="remove"``: the tokens are dropped) or replaced by a baseline token
(``removal="baseline"``: positions are kept).

- **Comprehensiveness / sufficiency** (DeYoung et al. 2020, ERASER, arXiv:1911.03429):
  ``comp_k = p(x) - p(x \\ top_k)``, ``suff_k = p(x) - p(top_k)`` (only the top-k kept); the
  reported values are the AOPC, the mean over the top-k% bins ``(1, 5, 10, 20, 50)``, with
  ``k = ceil(pct * n / 100)`` tokens of the ``n`` removable ones (at least 1), every bin kept
  (ERASER averages over fixed thresholds). Higher comprehensiveness and lower sufficiency are
  better.
- **Deletion / insertion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421): ``p`` as the top
  ``k_j = round(j n / n_steps)`` tokens are removed (deletion) or, starting from everything
  removed, inserted (insertion), ``j = 0..n_steps``; the area under each curve over the removed
  fraction ``[0, 1]`` by the trapezoid rule. Lower deletion AUC, higher insertion AUC are better.
- **Decision flip** (Chrysostomou & Aletras 2021): the rank of the target token (0 = the model's
  top choice) before and after removing the single most important token; ``decision_flip`` is the
  fraction of steps whose target was the top choice and no longer is.
- **Log-odds** (Shrikumar et al. 2017; Chen et al. 2020): the mean over the bins of
  ``logit(p(x \\ top_k)) - logit(p(x))`` with ``logit(p) = log p - log(1 - p)``. Lower (more
  negative) is better.

All perturbed inputs are scored by the engine's :func:`~lmxray.attribution._engine.score_sequences`
(the machinery behind occlusion: batched, chunked by a memory budget, prefix-cache aware);
identical perturbed inputs (e.g. a deletion point and a comprehensiveness bin) are scored once.

Example:
    >>> a = m.attribute("The capital of France is", target=" Paris", method="occlusion")  # doctest: +SKIP
    >>> f = lmxray.evaluate.faithfulness(m, a)  # doctest: +SKIP
    >>> f.summary()["comprehensiveness"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..attribution import score_sequences
from ..attribution.api import eval_mode
from ..attribution.base import Context
from ..attribution.gradient import resolve_baseline_ids
from ..attribution.removal import Perturber as _Perturber
from ..attribution.removal import RowBank as _RowBank
from ..attribution.removal import bin_sizes, curve_sizes
from ..errors import InputError
from ..io import from_jsonable, to_jsonable
from ..model import Model
from ..result import Attribution, Result
from ..targets import logprob
from ._common import candidate_positions, check_rank_by, nanmean, ranking, special_ids

__all__ = [
    "faithfulness",
    "Faithfulness",
    "FAITHFULNESS_METRICS",
    "DEFAULT_BINS",
    "bin_sizes",
    "curve_sizes",
    "target_rank",
]

DEFAULT_BINS: tuple[float, ...] = (1, 5, 10, 20, 50)
FAITHFULNESS_METRICS = (
    "comprehensiveness", "sufficiency", "log_odds", "deletion", "insertion", "decision_flip",
)
_LOGODDS_CLAMP = -1e-6  # log p is clamped below 0 so that logit(p) stays finite


def target_rank(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """A target function: how many vocabulary entries score strictly above the target (0 = top)."""
    tgt = logits.gather(-1, token_ids.unsqueeze(-1))
    return (logits > tgt).sum(-1).float()


@dataclass(repr=False)
class Faithfulness(Result):
    """Faithfulness of one attribution, per target step (``lmxray.faithfulness/1``: ``save`` /
    ``load``, ``show``).

    Attributes:
        method, model_name: copied from the attribution.
        bins: the top-k% bins, e.g. ``(1, 5, 10, 20, 50)``.
        full: ``[T]`` value (prob or logprob) of each target token on the full input.
        comprehensiveness, sufficiency, log_odds: ``[T, B]`` per step and bin (None if not asked).
        deletion, insertion: ``[T, n_steps + 1]`` curves (None if not asked).
        rank_before, rank_after: ``[T]`` target rank before / after removing the top token.
        n_candidates: ``[T]`` removable tokens per step (metrics are NaN where it is 0).
        info: removal, baseline, space, rank_by, sources, n_steps, bins...
    """

    FORMAT: ClassVar[str] = "lmxray.faithfulness/1"

    method: str
    model_name: str
    bins: tuple[float, ...]
    full: np.ndarray
    n_candidates: np.ndarray
    comprehensiveness: np.ndarray | None = None
    sufficiency: np.ndarray | None = None
    log_odds: np.ndarray | None = None
    deletion: np.ndarray | None = None
    insertion: np.ndarray | None = None
    rank_before: np.ndarray | None = None
    rank_after: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def decision_flip(self) -> np.ndarray | None:
        """``[T]``: 1 where the target was the top choice and is not after removing the top token,
        0 where it stays on top, NaN where it was not the top choice to begin with."""
        if self.rank_before is None or self.rank_after is None:
            return None
        out = np.where(self.rank_after > 0, 1.0, 0.0)
        return np.where(self.rank_before == 0, out, np.nan)

    @staticmethod
    def _auc(curves: np.ndarray) -> np.ndarray:
        """Trapezoid area of each ``[T, K]`` curve over the removed fraction ``[0, 1]``."""
        k = curves.shape[1] - 1
        return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2.0 * k)

    @property
    def deletion_auc(self) -> np.ndarray | None:
        return None if self.deletion is None else self._auc(self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray | None:
        return None if self.insertion is None else self._auc(self.insertion)

    def summary(self) -> dict[str, float]:
        """Scalar metrics, each the mean over target steps (NaN steps skipped)."""
        out: dict[str, float] = {}
        for name in ("comprehensiveness", "sufficiency", "log_odds"):
            arr = getattr(self, name)
            if arr is None:
                continue
            out[name] = nanmean(np.nanmean(arr, axis=1) if arr.size else [])
            for b, col in zip(self.bins, arr.T, strict=True):
                out[f"{name}@{_fmt_bin(b)}%"] = nanmean(col)
        if self.deletion is not None:
            out["deletion_auc"] = nanmean(self.deletion_auc)  # type: ignore[arg-type]
        if self.insertion is not None:
            out["insertion_auc"] = nanmean(self.insertion_auc)  # type: ignore[arg-type]
        if self.rank_after is not None:
            out["decision_flip"] = nanmean(self.decision_flip)  # type: ignore[arg-type]
            out["flip_rank"] = nanmean(np.where(self.n_candidates > 0, self.rank_after, np.nan))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN as None)."""
        data: dict[str, Any] = {"format": "lmxray.faithfulness/1", "method": self.method,
                                "model": self.model_name, "bins": list(self.bins)}
        for name in ("full", "n_candidates", "comprehensiveness", "sufficiency", "log_odds",
                     "deletion", "insertion", "rank_before", "rank_after"):
            v = getattr(self, name)
            data[name] = None if v is None else v.tolist()
        data["summary"] = self.summary()
        data["info"] = self.info
        return to_jsonable(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faithfulness:
        def arr(name: str, dtype: Any = np.float64) -> np.ndarray | None:
            v = data.get(name)
            return None if v is None else from_jsonable(v, dtype)

        full, n_cand = arr("full"), arr("n_candidates", np.int64)
        if full is None or n_cand is None:
            raise KeyError("full")
        return cls(
            method=data["method"], model_name=data.get("model", ""),
            bins=tuple(float(b) for b in data["bins"]), full=full, n_candidates=n_cand,
            comprehensiveness=arr("comprehensiveness"), sufficiency=arr("sufficiency"),
            log_odds=arr("log_odds"), deletion=arr("deletion"), insertion=arr("insertion"),
            rank_before=arr("rank_before"), rank_after=arr("rank_after"),
            info=dict(data.get("info") or {}),
        )

    def __repr__(self) -> str:
        return f"Faithfulness(method={self.method!r}, steps={len(self.full)})"


def _fmt_bin(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)


@dataclass
class _StepPlan:
    n: int
    full: int = -1
    comp: list[int] = field(default_factory=list)
    suff: list[int] = field(default_factory=list)
    dele: list[int] = field(default_factory=list)
    ins: list[int] = field(default_factory=list)
    rank: tuple[int, int] = (-1, -1)


def _check_attribution(a: Any, model: Model) -> Attribution:
    if not isinstance(a, Attribution):
        raise InputError(f"expected an lmxray Attribution, got {type(a).__name__}")
    if a.source_ids is None or a.target_ids is None:
        raise InputError(
            "the attribution carries no token ids (source_ids); compute it with lmxray "
            "(m.attribute(...)) so that it can be re-scored"
        )
    if a.info.get("foil") is not None:
        raise InputError(
            "faithfulness metrics of contrastive (foil) attributions are not supported; "
            "evaluate an attribution computed without foil="
        )
    if max(a.source_ids) >= model.vocab_size:
        raise InputError(
            f"the attribution holds token id {max(a.source_ids)}, outside this model's vocabulary "
            f"of {model.vocab_size}; evaluate it with the model that produced it"
        )
    return a


def _resolve_removal(model: Model, removal: str, baseline: Any) -> tuple[int | None, str]:
    if removal == "remove":
        return None, "remove"
    if removal == "baseline":
        bid, desc = resolve_baseline_ids(model, baseline)
        if bid is None:
            raise InputError("removal='baseline' needs a token baseline ('auto', 'pad', 'unk', 'eos' or an id), not 'zero'")
        return bid, desc
    raise InputError(f"removal must be 'remove' or 'baseline', got {removal!r}")


def _check_metrics(metrics: Sequence[str] | None) -> set[str]:
    if metrics is None:
        return set(FAITHFULNESS_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen = set(metrics)
    unknown = sorted(chosen - set(FAITHFULNESS_METRICS))
    if unknown:
        raise InputError(
            f"unknown faithfulness metric {unknown[0]!r}; choose from {', '.join(FAITHFULNESS_METRICS)}"
        )
    if not chosen:
        raise InputError("no faithfulness metric chosen")
    return chosen


def _check_params(bins: Sequence[float], n_steps: int, space: str) -> tuple[float, ...]:
    if space not in ("prob", "logprob"):
        raise InputError(f"space must be 'prob' or 'logprob', got {space!r}")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise InputError(f"n_steps must be a positive integer, got {n_steps!r}")
    try:
        out = tuple(float(b) for b in bins)
    except (TypeError, ValueError):
        raise InputError(f"bins must be percentages in (0, 100], got {bins!r}") from None
    if not out or any(not 0 < b <= 100 for b in out):
        raise InputError(f"bins must be percentages in (0, 100], got {list(bins)!r}")
    return out


def faithfulness(
    model: Model,
    attribution: Attribution | Sequence[Attribution],
    *,
    metrics: Sequence[str] | None = None,
    removal: str = "remove",
    baseline: Any = "auto",
    bins: Sequence[float] = DEFAULT_BINS,
    n_steps: int = 20,
    space: str = "prob",
    rank_by: str = "signed",
    sources: str = "all",
    keep_special: bool = True,
    internal_batch_size: int | None = None,
    memory_budget: int | None = None,
) -> Faithfulness | list[Faithfulness]:
    """Faithfulness metrics of one attribution or a list of them (batched together).

    Args:
        model: the model that produced the attribution(s).
        attribution: an :class:`Attribution` with token ids, or a list (a list comes back).
        metrics: subset of ``comprehensiveness, sufficiency, log_odds, deletion, insertion,
            decision_flip`` (default: all); only the perturbations they need are scored.
        removal: ``"remove"`` (drop tokens) or ``"baseline"`` (replace them by ``baseline``).
        baseline: the replacement token for ``removal="baseline"``: ``"auto"`` (unk, pad or eos),
            ``"pad"``, ``"unk"``, ``"eos"`` or a token id.
        bins: top-k% bins of the AOPC (percentages).
        n_steps: points on the deletion/insertion curves, minus one.
        space: ``"prob"`` (ERASER) or ``"logprob"``.
        rank_by: order tokens by ``"signed"`` score (default) or by ``"abs"`` magnitude.
        sources: ``"all"`` (prompt and earlier target tokens) or ``"prompt"`` may be removed.
        keep_special: never remove special tokens (BOS...); they do not count in ``n``.

    Returns:
        :class:`Faithfulness` per attribution; ``.summary()`` gives the scalar metrics.
    """
    single = isinstance(attribution, Attribution)
    attrs = [attribution] if single else list(attribution)  # type: ignore[list-item]
    if not attrs:
        raise InputError("no attribution to evaluate")
    chosen = _check_metrics(metrics)
    bins_t = _check_params(bins, n_steps, space)
    check_rank_by(rank_by)
    attrs = [_check_attribution(a, model) for a in attrs]
    baseline_id, baseline_desc = _resolve_removal(model, removal, baseline)
    specials = special_ids(model) if keep_special else frozenset()
    tok = model.tokenizer
    fallback = next((int(i) for i in (tok.bos_token_id, tok.eos_token_id, model.pad_token_id)
                     if i is not None), 0)
    perturb = _Perturber(removal, baseline_id, fallback)
    want_comp = bool(chosen & {"comprehensiveness", "log_odds"})
    want_suff = "sufficiency" in chosen

    bank, rank_bank = _RowBank(), _RowBank()
    plans: list[list[_StepPlan]] = []
    for a in attrs:
        ids = [int(i) for i in a.source_ids]  # type: ignore[union-attr]
        steps = []
        for t, target in enumerate(a.target_ids):  # type: ignore[union-attr]
            prefix = ids[: a.prompt_length + t]
            cands = candidate_positions(a, t, sources=sources, specials=specials)
            order = ranking(a.scores[t], cands, rank_by)
            plan = _StepPlan(n=len(order))
            plan.full = bank.add(prefix, target)
            everything = set(order.tolist())
            if plan.n:
                for k in bin_sizes(plan.n, bins_t) if want_comp or want_suff else []:
                    top = set(order[:k].tolist())
                    if want_comp:
                        plan.comp.append(bank.add(perturb(prefix, top), target))
                    if want_suff:
                        plan.suff.append(bank.add(perturb(prefix, everything - top), target))
                for k in curve_sizes(plan.n, n_steps):
                    top = set(order[:k].tolist())
                    if "deletion" in chosen:
                        plan.dele.append(bank.add(perturb(prefix, top), target))
                    if "insertion" in chosen:
                        plan.ins.append(bank.add(perturb(prefix, everything - top), target))
                if "decision_flip" in chosen:
                    plan.rank = (rank_bank.add(prefix, target),
                                 rank_bank.add(perturb(prefix, {int(order[0])}), target))
            steps.append(plan)
        plans.append(steps)

    ctx = Context(target_fn=logprob, internal_batch_size=internal_batch_size,
                  memory_budget=memory_budget)
    with eval_mode(model):
        lp = np.array([v[0] for v in score_sequences(model, bank.rows, ctx)], dtype=np.float64)
        ranks = np.zeros(0)
        if rank_bank.rows:
            rctx = Context(target_fn=target_rank, internal_batch_size=internal_batch_size,
                           memory_budget=memory_budget)
            ranks = np.array([v[0] for v in score_sequences(model, rank_bank.rows, rctx)])
    value = np.exp(lp) if space == "prob" else lp
    lo = _log_odds(lp)

    info = {
        "removal": removal, "baseline": baseline_desc if removal == "baseline" else None,
        "space": space, "rank_by": rank_by, "sources": sources, "keep_special": keep_special,
        "n_steps": n_steps, "bins": list(bins_t), "metrics": sorted(chosen),
        "empty_context_token": fallback, "perturbed_sequences": len(bank.rows) + len(rank_bank.rows),
    }
    results = []
    for a, steps in zip(attrs, plans, strict=True):
        _check_target_scores(a, lp[[p.full for p in steps]])
        results.append(_collect(a, steps, value, lo, ranks, bins_t, n_steps, chosen, info))
    return results[0] if single else results


def _log_odds(lp: np.ndarray) -> np.ndarray:
    x = np.minimum(lp, _LOGODDS_CLAMP)
    log1m = np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))
    return x - log1m


def _check_target_scores(a: Attribution, lp_full: np.ndarray) -> None:
    """An attribution re-scored by another model is a mistake worth one clear line."""
    if a.info.get("target_fn", "logprob") != "logprob":
        return
    ref = np.asarray(a.target_scores, dtype=np.float64)
    ok = np.isnan(ref) | (np.abs(ref - lp_full) <= 1e-2 + 1e-2 * np.abs(ref))
    if not ok.all():
        raise InputError(
            f"the attribution's target log-probabilities ({ref[~ok][0]:.4g}) differ from this "
            f"model's ({lp_full[~ok][0]:.4g}); evaluate it with the model that produced it"
        )


def _collect(
    a: Attribution,
    steps: list[_StepPlan],
    value: np.ndarray,
    lo: np.ndarray,
    ranks: np.ndarray,
    bins: tuple[float, ...],
    n_steps: int,
    chosen: set[str],
    info: dict[str, Any],
) -> Faithfulness:
    T, B, K = len(steps), len(bins), n_steps + 1
    nan = np.full
    full = np.array([value[p.full] for p in steps])
    comp, suff, lodds = nan((T, B), np.nan), nan((T, B), np.nan), nan((T, B), np.nan)
    dele, ins = nan((T, K), np.nan), nan((T, K), np.nan)
    rb, ra = nan(T, np.nan), nan(T, np.nan)
    for t, p in enumerate(steps):
        if not p.n:
            continue
        if p.comp:
            comp[t] = full[t] - value[p.comp]
            lodds[t] = lo[p.comp] - lo[p.full]
        if p.suff:
            suff[t] = full[t] - value[p.suff]
        if p.dele:
            dele[t] = value[p.dele]
        if p.ins:
            ins[t] = value[p.ins]
        if p.rank[0] >= 0:
            rb[t], ra[t] = ranks[p.rank[0]], ranks[p.rank[1]]
    return Faithfulness(
        method=a.method,
        model_name=a.model_name,
        bins=bins,
        full=full,
        n_candidates=np.array([p.n for p in steps], dtype=np.int64),
        comprehensiveness=comp if "comprehensiveness" in chosen else None,
        sufficiency=suff if "sufficiency" in chosen else None,
        log_odds=lodds if "log_odds" in chosen else None,
        deletion=dele if "deletion" in chosen else None,
        insertion=ins if "insertion" in chosen else None,
        rank_before=rb if "decision_flip" in chosen else None,
        rank_after=ra if "decision_flip" in chosen else None,
        info=dict(info),
    )
