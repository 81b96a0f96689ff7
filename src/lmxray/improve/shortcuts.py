"""Shortcut detection: tokens that the model's explanations lean on, that are not the reasons the
answer should have, and that predict the label in the data.

A shortcut (a spurious feature, "Clever Hans") is a token whose presence is correlated with the
label in the training data but is not part of the rationale — the zoo's sentiment task plants
one: "I watched it on Tuesday" comes with a positive training label 95% of the time. Following the
explanation-as-debugging workflow (Ross et al. 2017 find decoys from input gradients; Zhou et
al. 2022, arXiv 2104.14403, plant features to check that attributions reveal them), we:

1. attribute each example's label (its first target token) to its prompt tokens with any
   registered method (default: input x gradient; one batched call);
2. aggregate per token type over the dataset: ``share`` — the token's mean fraction of the
   example's total absolute attribution, relative to a uniform share (``attr = share * n_tokens``,
   so 1 means "an average token"); ``rationale`` — the fraction of its occurrences inside the
   annotated rationales; ``assoc`` — how strongly its presence predicts a label:
   ``max_y (P̃(y | token) - P(y)) / (1 - P(y))`` (0: no information; 1: always that label),
   with ``P̃(y | token) = (count(y, token) + a P(y)) / (count(token) + a)`` shrunk towards the
   prior by ``a = prior_count`` pseudo-examples, so that a rare token is not called predictive
   on a handful of occurrences;
3. explain away: a token that occurs mostly together with a more predictive one (" on" in
   "I watched it on Tuesday") is scored by its *residual* association on the examples without
   that token (:func:`explain_away`; the table names the explaining token);
4. rank the candidates (occurring in at least ``min_count`` examples, at most half of the time
   inside rationales) by ``score = attr * assoc * (1 - rationale)``.

Without rationale annotations the real evidence is label-correlated too and ranks with the
shortcuts; the report says so. The result feeds :func:`lmxray.improve.regularise.finetune`
(``irrelevant=report.top(1)``).
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..attribution.api import attribute
from ..errors import InputError
from ..examples import AnnotatedExample
from ..model import Model
from ._common import as_labelled
from .results import ShortcutReport

__all__ = ["ShortcutReport", "detect_shortcuts", "token_table", "association", "explain_away"]


def token_table(
    tokens: Sequence[Sequence[int]],
    shares: Sequence[np.ndarray],
    signed: Sequence[np.ndarray],
    rationales: Sequence[set[int]],
    labels: Sequence[str],
    skip: set[int],
    prior_count: float = 10.0,
) -> dict[int, dict[str, float]]:
    """Aggregate per token id (pure function; the reference for the tests).

    Args:
        tokens: per example, the prompt token ids ``[L_n]``.
        shares: per example, ``|attribution|`` share of each position ``[L_n]`` (sums to 1 over
            the counted positions).
        signed: per example, signed share ``[L_n]``.
        rationales: per example, rationale positions.
        labels: per example, its label.
        skip: token ids never counted (special tokens).
        prior_count: pseudo-examples shrinking ``P(label | token)`` towards ``P(label)``.

    Returns:
        ``{id: {count, attr, signed, rationale, assoc, label, p_label}}``.
    """
    n = len(tokens)
    prior = Counter(labels)
    present: dict[int, list[int]] = defaultdict(list)
    attr: dict[int, list[float]] = defaultdict(list)
    sgn: dict[int, list[float]] = defaultdict(list)
    occ: Counter[int] = Counter()
    in_rat: Counter[int] = Counter()
    for e, ids in enumerate(tokens):
        counted = [i for i, t in enumerate(ids) if t not in skip]
        n_counted = max(len(counted), 1)
        per: dict[int, float] = defaultdict(float)
        per_s: dict[int, float] = defaultdict(float)
        for i in counted:
            t = int(ids[i])
            per[t] += float(shares[e][i])
            per_s[t] += float(signed[e][i])
            occ[t] += 1
            if i in rationales[e]:
                in_rat[t] += 1
        for t, v in per.items():
            present[t].append(e)
            attr[t].append(v * n_counted)
            sgn[t].append(per_s[t])
    out: dict[int, dict[str, Any]] = {}
    for t, ex in present.items():
        best, best_v, best_p = association([labels[e] for e in ex], prior, n, prior_count)
        out[t] = {
            "count": len(ex),
            "attr": float(np.mean(attr[t])),
            "signed": float(np.mean(sgn[t])),
            "rationale": in_rat[t] / occ[t],
            "assoc": best_v,
            "label": best,
            "p_label": best_p,
            "examples": list(ex),
        }
    return out


def association(
    labels: Sequence[str], prior: Counter[str], n: int, prior_count: float
) -> tuple[Any, float, float]:
    """``(label, assoc, P̃(label | token))`` of the label a token's examples (``labels``) lean to
    most, against the label counts ``prior`` of ``n`` examples (see the module docstring)."""
    lab = Counter(labels)
    best, best_v, best_p = None, 0.0, 0.0
    for y, c in sorted(lab.items()):
        p_y = prior[y] / n if n else 0.0
        p = (c + prior_count * p_y) / (len(labels) + prior_count)
        v = (p - p_y) / (1 - p_y) if p_y < 1 else 0.0
        if best is None or v > best_v:
            best, best_v, best_p = y, v, p
    return best, float(max(best_v, 0.0)), float(best_p)


def explain_away(
    stats: dict[int, dict[str, Any]],
    candidates: Sequence[int],
    labels: Sequence[str],
    prior_count: float,
    overlap: float = 0.5,
) -> dict[int, tuple[float, int | None]]:
    """Residual association of each candidate once co-occurring, more predictive tokens are
    accounted for: ``{id: (assoc, explained_by)}``.

    A token ``t`` that appears mostly together with a token ``u`` of higher association
    (``P(u | t) >= overlap``; e.g. " on" in "I watched it on Tuesday") inherits ``u``'s label
    correlation; its residual association is measured on the examples without such ``u``
    (against the label distribution of those examples), capped at its raw association, so that
    the template words around a shortcut do not rank with it.
    """
    order = sorted(candidates, key=lambda t: (-stats[t]["assoc"], t))
    sets = {t: set(stats[t]["examples"]) for t in candidates}
    out: dict[int, tuple[float, int | None]] = {}
    for i, t in enumerate(order):
        explainers = [
            u
            for u in order[:i]
            if stats[u]["assoc"] > stats[t]["assoc"]
            and len(sets[t] & sets[u]) >= overlap * len(sets[t])
        ]
        if not explainers:
            out[t] = (stats[t]["assoc"], None)
            continue
        excluded = set().union(*(sets[u] for u in explainers))
        rest = [e for e in range(len(labels)) if e not in excluded]
        mine = [labels[e] for e in sets[t] if e not in excluded]
        _, v, _ = association(mine, Counter(labels[e] for e in rest), len(rest), prior_count)
        if v >= stats[t]["assoc"]:  # explaining away only removes association
            out[t] = (stats[t]["assoc"], None)
        else:
            out[t] = (v, max(explainers, key=lambda u: len(sets[t] & sets[u])))
    return out


def _attribution_shares(
    model: Model,
    data: Sequence[AnnotatedExample],
    method: str,
    batch_size: int,
    progress: bool,
    method_params: dict[str, Any],
) -> tuple[list[list[int]], list[np.ndarray], list[np.ndarray], set[int], list[Any]]:
    """Per example its prompt ids, |attribution| shares and signed shares of the label (special
    tokens get 0), the special ids, and the warnings the method raised."""
    tokens: list[list[int]] = []
    shares: list[np.ndarray] = []
    signed: list[np.ndarray] = []
    skip = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    bar = tqdm(total=len(data), desc=f"shortcuts ({method})", unit="ex", disable=not progress)
    caught: list[warnings.WarningMessage] = []
    try:
        for a in range(0, len(data), batch_size):
            chunk = data[a : a + batch_size]
            with warnings.catch_warnings(record=True) as got:  # one summary, not one per batch
                warnings.simplefilter("always")
                res = attribute(
                    model,
                    [e.prompt for e in chunk],
                    [e.target for e in chunk],
                    method=method,
                    **method_params,
                )
            caught += got
            for r in res:
                ids = list(r.source_ids[: len(r.source_ids) - len(r.target_ids)])
                s = np.nan_to_num(np.asarray(r.scores[0, : len(ids)], dtype=np.float64))
                keep = np.array([t not in skip for t in ids], dtype=bool)
                mag = np.abs(s) * keep
                total = mag.sum()
                shares.append(mag / total if total > 0 else mag)
                signed.append(s * keep / total if total > 0 else s * 0)
                tokens.append(ids)
            bar.update(len(chunk))
    finally:
        bar.close()
    return tokens, shares, signed, skip, caught


def _ranked_rows(
    model: Model,
    stats: dict[int, dict[str, Any]],
    labels: Sequence[str],
    min_count: int,
    max_rationale: float,
    prior_count: float,
    explain: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(candidates by score, rationale tokens by attribution)`` as report rows."""
    rows, excluded = [], []
    cands = [
        t
        for t, st in stats.items()
        if st["count"] >= min_count and st["rationale"] <= max_rationale
    ]
    residual = explain_away(stats, cands, labels, prior_count) if explain else {}
    for t, st in stats.items():
        if st["count"] < min_count:
            continue
        row = {
            "token": model.token_strings([t])[0],
            "id": int(t),
            **{k: v for k, v in st.items() if k != "examples"},
        }
        row["assoc_raw"] = st["assoc"]
        assoc, by = residual.get(t, (st["assoc"], None))
        row["assoc"] = assoc
        row["explained_by"] = model.token_strings([by])[0] if by is not None else None
        row["score"] = float(st["attr"] * assoc * (1 - st["rationale"]))
        (excluded if st["rationale"] > max_rationale else rows).append(row)
    rows.sort(key=lambda r: (-r["score"], -r["attr"], r["id"]))
    excluded.sort(key=lambda r: (-r["attr"], r["id"]))
    for r in rows + excluded:
        for k in ("attr", "signed", "rationale", "assoc", "assoc_raw", "p_label", "score"):
            r[k] = round(float(r[k]), 6)
    return rows, excluded


def detect_shortcuts(
    model: Model,
    examples: Sequence[Any],
    *,
    method: str = "input_x_gradient",
    min_count: int = 5,
    max_rationale: float = 0.5,
    prior_count: float = 10.0,
    explain: bool = True,
    batch_size: int = 64,
    progress: bool = True,
    **method_params: Any,
) -> ShortcutReport:
    """Rank the tokens of a labelled dataset by how much they look like a shortcut.

    Args:
        model: the lmxray Model (or a black-box model with a perturbation ``method``).
        examples: labelled examples (zoo items, dicts with ``prompt``/``target``/``rationale``,
            ...; see :func:`lmxray.improve._common.as_labelled`).
        method: any registered attribution method.
        min_count: candidates occur in at least this many examples.
        max_rationale: tokens inside rationales more often than this are excluded.
        prior_count: shrinkage of the label association (pseudo-examples, see module docstring).
        explain: measure each token's association after explaining away co-occurring, more
            predictive tokens (:func:`explain_away`); ``False`` ranks by the raw association.
        batch_size: examples per attribution call.
        progress: show a progress bar.
        **method_params: passed to the method (e.g. ``n_steps`` for integrated gradients).

    Returns:
        :class:`ShortcutReport`.

    Example:
        >>> rep = detect_shortcuts(m, lmxray.zoo.generate("sentiment", "train", 300))  # doctest: +SKIP
        >>> rep.top(1)                                                              # doctest: +SKIP
        ['Tuesday']
    """
    data: list[AnnotatedExample] = as_labelled(examples, model)
    if min_count < 1:
        raise InputError(f"min_count must be at least 1, got {min_count}")
    if len(data) < 2:
        raise InputError("shortcut detection needs a dataset (at least 2 labelled examples)")
    tokens, shares, signed, skip, caught = _attribution_shares(
        model, data, method, batch_size, progress, method_params
    )
    if caught:
        first = caught[0]
        warnings.warn(
            f"the attribution method warned {len(caught)} times; the first: {first.message}",
            first.category,
            stacklevel=2,
        )
    labels = [e.cls for e in data]
    stats = token_table(
        tokens, shares, signed, [set(e.rationale) for e in data], labels, skip, prior_count
    )
    rows, excluded = _ranked_rows(
        model, stats, labels, min_count, max_rationale, prior_count, explain
    )
    params = {k: v for k, v in method_params.items() if isinstance(v, int | float | str | bool)}
    info = {"min_count": min_count, "max_rationale": max_rationale, "prior_count": prior_count,
            "explain": explain, "warnings": len(caught), "method_params": params}
    return ShortcutReport(rows=rows, excluded=excluded, n_examples=len(data), method=method,
                          labels=dict(sorted(Counter(labels).items())),
                          has_rationales=any(e.rationale for e in data), model_name=model.name,
                          info=info)
