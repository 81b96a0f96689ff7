"""Plausibility: does an explanation agree with a human (or ground-truth) rationale?

Definitions follow ERASER (DeYoung et al. 2020, arXiv:1911.03429, ``rationale_benchmark/metrics.py``):

- **Token precision / recall / F1 at top-k**: the ``k`` highest-ranked prompt tokens (default
  ``k`` = the rationale's length) against the rationale tokens.
- **IOU-F1** (partial match): the top-k tokens form contiguous predicted spans; a predicted span
  is a true positive when its intersection-over-union with some rationale span is at least
  ``iou_threshold`` (0.5); precision = TP / predicted spans, recall = TP / rationale spans.
- **AUPRC** (area under the precision-recall curve, ``auc(recall, precision)`` as ERASER
  computes it), **average precision** and **ROC-AUC** of the soft scores (scikit-learn);
  undefined (NaN) when the rationale covers all candidate tokens or none.

Candidates are the prompt tokens less special tokens (BOS...). Scores per prompt token come from
one target step (``step=``) or from all steps summed (default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..result import Attribution
from ._common import judged_prompt, spans

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["plausibility", "token_plausibility", "iou_f1", "PLAUSIBILITY_METRICS"]

PLAUSIBILITY_METRICS = (
    "token_precision", "token_recall", "token_f1", "iou_f1", "auprc", "average_precision", "roc_auc",
)


def _f1(p: float, r: float) -> float:
    return 0.0 if p == 0 or r == 0 else 2 * p * r / (p + r)


def iou_f1(truth: np.ndarray, predicted: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ERASER partial-match precision, recall and F1 of two boolean masks of one instance."""
    t_spans, p_spans = spans(truth), spans(predicted)
    if not p_spans or not t_spans:
        return {"iou_precision": 0.0, "iou_recall": 0.0, "iou_f1": 0.0}
    tp = 0
    for ps, pe in p_spans:
        pset = set(range(ps, pe))
        best = max(len(pset & set(range(ts, te))) / len(pset | set(range(ts, te)))
                   for ts, te in t_spans)
        tp += int(best >= threshold)
    p, r = tp / len(p_spans), min(1.0, tp / len(t_spans))
    return {"iou_precision": p, "iou_recall": r, "iou_f1": _f1(p, r)}


def token_plausibility(
    scores: np.ndarray, truth: np.ndarray, *, k: int | None = None, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Plausibility of soft scores against a boolean rationale over the same tokens.

    Args:
        scores: ``[n]`` importance of each candidate token (higher = more important; NaN last).
        truth: ``[n]`` boolean rationale.
        k: how many top tokens form the hard prediction (default: ``truth.sum()``).

    Returns:
        ``token_precision``, ``token_recall``, ``token_f1``, ``iou_f1`` (with ``iou_precision``,
        ``iou_recall``), ``auprc``, ``average_precision``, ``roc_auc``.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 1:
        raise InputError(f"scores {scores.shape} and rationale {truth.shape} must be 1-D of one length")
    n = len(scores)
    k = int(truth.sum()) if k is None else int(k)
    if not 0 <= k <= n:
        raise InputError(f"k={k} must be between 0 and the {n} candidate tokens")
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-ranked, kind="stable")
    pred = np.zeros(n, dtype=bool)
    pred[order[:k]] = True
    hits = int((pred & truth).sum())
    prec = hits / k if k else 0.0
    rec = hits / int(truth.sum()) if truth.any() else 0.0
    out = {"token_precision": prec, "token_recall": rec, "token_f1": _f1(prec, rec)}
    out.update(iou_f1(truth, pred, iou_threshold))
    if truth.all() or not truth.any():
        out.update(auprc=float("nan"), average_precision=float("nan"), roc_auc=float("nan"))
    else:
        soft = np.where(np.isnan(scores), np.nanmin(scores) - 1 if not np.isnan(scores).all() else 0, scores)
        precision, recall, _ = precision_recall_curve(truth.astype(int), soft)
        out["auprc"] = float(auc(recall, precision))
        out["average_precision"] = float(average_precision_score(truth.astype(int), soft))
        out["roc_auc"] = float(roc_auc_score(truth.astype(int), soft))
    return out


def plausibility(
    attribution: Attribution, rationale: Any, *, model: Model | None = None, k: int | None = None,
    step: int | None = None, aggregate: str = "sum", rank_by: str = "signed",
    keep_special: bool = True, iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Plausibility of an attribution's prompt-token scores against a rationale.

    Args:
        attribution: the explanation.
        rationale: prompt token indices (positions as ``model.encode(prompt)`` gives them,
            special tokens included) or a boolean mask over the prompt tokens.
        model: when given, its special tokens (BOS...) are left out of the candidates.
        k: top-k for the hard metrics (default: the rationale's length among candidates).
        step: judge one target step's scores (default: all steps, ``aggregate``-d).
        rank_by: ``"signed"`` or ``"abs"`` scores.

    Example:
        >>> plausibility(a, rationale=[4, 5], model=m)["token_f1"]  # doctest: +SKIP
    """
    truth, cands, s = judged_prompt(attribution, rationale, "rationale", model=model, step=step,
                                    aggregate=aggregate, rank_by=rank_by,
                                    keep_special=keep_special)
    if rank_by == "abs":
        s = np.abs(s)
    return token_plausibility(s[cands], truth[cands], k=k, iou_threshold=iou_threshold)
