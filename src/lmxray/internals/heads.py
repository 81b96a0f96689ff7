"""Attention-head analysis: behaviour scores from attention patterns, and head ablation.

**Scores** (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et
al. 2022, "In-context Learning and Induction Heads"), averaged over query positions:

- *previous-token*: attention from token ``q`` to ``q - 1``;
- *duplicate-token*: attention from ``q`` to ``j``, the latest earlier occurrence of the same
  token (``t_j = t_q``, ``j < q``);
- *induction*: attention from ``q`` to ``j + 1``, the token that followed that occurrence
  (the prefix-matching pattern of an induction head).

The default data are repeated random tokens (``BOS r_1..r_n r_1..r_n``, the standard probe),
where duplicate and induction reduce to offsets ``n`` and ``n - 1`` in the second half; any
prompts may be given instead. Patterns come from eager attention (read through the
``attn.pattern`` site).

**Ablation**: replace a head's result (``attn.head_out``) at every position by zero or by its
mean over a reference set (mean ablation, Wang et al. 2023), and measure the task metric (mean
log-probability of the target and accuracy). :func:`head_ablation_effects` ablates each head
alone, batched (many heads per forward); :func:`random_heads_control` draws random head sets
of the same size as a baseline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..hooks import Replace, intervene, run_with_cache
from ..io import from_jsonable
from ..memory import check_batch_size
from ..model import Model
from ..result import Result
from ..sites import site_map

__all__ = [
    "HeadScores", "head_scores", "repeated_tokens", "task_metric", "ablate_heads",
    "head_ablation_effects", "random_heads_control", "head_means", "SCORE_KINDS",
]

SCORE_KINDS = ("previous_token", "duplicate_token", "induction")


@dataclass
class HeadScores(Result):
    """Per-head scores ``[n_layers, n_heads]`` by kind, and optionally an ablation effect map.

    ``info["data"]`` says which prompts the scores were measured on (they depend on it: an
    induction head scores high only where a sequence repeats). Views: ``show(top=5)``,
    ``to_html()``, ``to_png(path, kind="induction" | ... | "ablation")``.
    """

    FORMAT: ClassVar[str] = "lmxray.heads/1"

    scores: dict[str, np.ndarray]
    ablation: np.ndarray | None = None
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, kind: str = "induction", k: int = 5) -> list[tuple[tuple[int, int], float]]:
        """The ``k`` highest-scoring heads of ``kind`` as ``((layer, head), score)``."""
        if kind not in self.scores:
            raise InputError(f"no {kind!r} scores; have {', '.join(self.scores)}")
        s = self.scores[kind]
        flat = np.argsort(-s, axis=None)[:k]
        return [((int(i // s.shape[1]), int(i % s.shape[1])), float(s.flat[i])) for i in flat]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "model": self.model_name, "scores": self.scores,
                "ablation": self.ablation, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadScores:
        return cls(scores={k: from_jsonable(v) for k, v in d["scores"].items()},
                   ablation=from_jsonable(d["ablation"]) if d.get("ablation") is not None else None,
                   model_name=d.get("model", ""), info=d.get("info", {}))

    def to_png(self, path: str | os.PathLike[str] | None = None, kind: str = "induction", **kw: Any) -> bytes:
        """A PNG heat map of one score kind (or ``"ablation"``)."""
        return super().to_png(path, kind=kind, **kw)


def _positive(minimum: int = 1, **values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
            raise InputError(f"{name} must be a whole number of at least {minimum}, got {v!r}")


def _score_inputs(model: Model, inputs: Any) -> list[list[int]]:
    """Token ids of the prompts to score; empty prompts (or shorter than 2 tokens) are refused."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise InputError("no inputs to score heads on; give prompts (or none for the default probe)")
    seqs = []
    for i, x in enumerate(items):
        if isinstance(x, str) and not x.strip():
            raise InputError(f"prompt {i} is empty; give text with at least two tokens")
        ids = model.encode(x) if isinstance(x, str) else [int(t) for t in x]
        if len(ids) < 2:
            raise InputError(f"prompt {i} has {len(ids)} token(s); head scores need at least two")
        seqs.append(ids)
    return seqs


def repeated_tokens(model: Model, n_seqs: int = 16, seq_len: int = 20, seed: int = 0) -> list[list[int]]:
    """``n_seqs`` sequences ``[BOS] + r + r`` of ``seq_len`` random non-special tokens each."""
    _positive(n_seqs=n_seqs)
    _positive(2, seq_len=seq_len)
    vocab = min(len(model.tokenizer), model.vocab_size)
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    pool = np.array([i for i in range(vocab) if i not in special])
    rng = np.random.default_rng(seed)
    bos = model.tokenizer.bos_token_id
    start = [int(bos)] if bos is not None else []
    model.check_length(len(start) + 2 * seq_len)
    out = []
    for _ in range(n_seqs):
        r = rng.choice(pool, size=seq_len, replace=len(pool) < seq_len).tolist()
        out.append(start + r + r)
    return out


def _scores_one(tokens: Sequence[int], pattern: torch.Tensor, acc: dict[str, list[Any]]) -> None:
    """Accumulate the three scores of one sequence; ``pattern`` is ``[n_layers, H, L, L]``."""
    last: dict[int, int] = {}
    prev_q, dup_q, dup_k, ind_q, ind_k = [], [], [], [], []
    for q, t in enumerate(tokens):
        if q >= 1:
            prev_q.append(q)
        j = last.get(t)
        if j is not None:
            dup_q.append(q)
            dup_k.append(j)
            if j + 1 < q:
                ind_q.append(q)
                ind_k.append(j + 1)
        last[t] = q
    for name, qs, ks in (("previous_token", prev_q, [q - 1 for q in prev_q]),
                         ("duplicate_token", dup_q, dup_k), ("induction", ind_q, ind_k)):
        if qs:
            vals = pattern[:, :, qs, ks]  # [layers, H, n]
            acc[name][0] += vals.sum(-1).double()
            acc[name][1] += len(qs)


@torch.no_grad()
def head_scores(
    model: Model,
    inputs: Any = None,
    *,
    n_seqs: int = 16,
    seq_len: int = 20,
    seed: int = 0,
    batch_size: int = 8,
    data: str | None = None,
) -> HeadScores:
    """Previous-token, duplicate-token and induction scores of every head.

    Args:
        inputs: prompts or token-id lists (default: :func:`repeated_tokens`).
        n_seqs / seq_len / seed: the repeated-random-token probe.
        batch_size: sequences per forward.
        data: what the inputs are, for the report (default: "repeated random tokens" or
            "given prompts").

    Returns:
        :class:`HeadScores` with ``scores[kind]`` of shape ``[n_layers, n_heads]`` in ``[0, 1]``.
    """
    sm = site_map(model)
    _positive(batch_size=batch_size)
    if inputs is None:
        seqs = repeated_tokens(model, n_seqs, seq_len, seed)
    else:
        seqs = _score_inputs(model, inputs)
    if data is None:
        data = "repeated random tokens" if inputs is None else "given prompts"
    acc: dict[str, list[Any]] = {k: [torch.zeros(sm.n_layers, sm.n_heads, dtype=torch.float64), 0] for k in SCORE_KINDS}
    names = sm.by_layer("attn.pattern")
    for s in range(0, len(seqs), batch_size):
        batch = seqs[s:s + batch_size]
        cache = run_with_cache(model, batch, cache=names, logits=False, device="cpu")
        pats = torch.stack([cache[n] for n in names], 1).float()  # [B, layers, H, L, L]
        for b, toks in enumerate(batch):
            p = int(cache.pad[b])
            _scores_one(toks, pats[b][:, :, p:, p:], acc)
    scores = {k: (v[0] / max(v[1], 1)).numpy().astype(np.float32) for k, v in acc.items()}
    return HeadScores(scores=scores, model_name=model.name,
                      info={"data": data, "n": len(seqs), "seq_len": seq_len if inputs is None else None,
                            "seed": seed, "query_counts": {k: int(v[1]) for k, v in acc.items()}})


# --------------------------------------------------------------------------- ablation
def _examples(model: Model, prompts: Sequence[str], targets: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    if isinstance(prompts, str) or isinstance(targets, str):
        raise InputError("prompts and targets must be lists of strings")
    if len(prompts) != len(targets) or not prompts:
        raise InputError(f"need as many targets as prompts (got {len(prompts)} and {len(targets)})")
    out = []
    for p, t in zip(prompts, targets, strict=True):
        tid = model.encode_target(t)
        if not tid:
            raise InputError(f"target {t!r} has no tokens")
        out.append((model.encode(p), tid))
    return out


def head_means(model: Model, prompts: Sequence[str], *, batch_size: int = 16) -> torch.Tensor:
    """Mean of ``attn.head_out`` over every token of ``prompts``: ``[n_layers, H, d_head]``."""
    check_batch_size(batch_size, "batch_size")
    if isinstance(prompts, str) or not prompts:
        raise InputError("head_means needs a non-empty list of prompts")
    sm = site_map(model)
    names = sm.by_layer("attn.head_out")
    total, count = None, 0
    for s in range(0, len(prompts), batch_size):
        cache = run_with_cache(model, list(prompts[s:s + batch_size]), cache=names, logits=False)
        mask = cache.attention_mask != 0
        x = torch.stack([cache[n][mask].double().sum(0) for n in names])
        total = x if total is None else total + x
        count += int(mask.sum())
    if total is None:  # pragma: no cover - prompts is not empty
        raise InputError("head_means needs a non-empty list of prompts")
    return (total / count).float()


def _head_values(model: Model, how: str, means: torch.Tensor | None, prompts: Sequence[str]) -> torch.Tensor | None:
    if how == "zero":
        return None
    if how == "mean":
        return means if means is not None else head_means(model, prompts)
    raise InputError(f"ablation must be 'zero' or 'mean', got {how!r}")


@torch.no_grad()
def _metric_rows(model: Model, ex: Sequence[tuple[list[int], list[int]]], spec: dict[str, Any] | None,
                 n_copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Log-prob of each target (teacher forced) and greedy correctness, for ``n_copies`` copies of
    the batch (rows ``c * B + b``): ``[n_copies, B]`` each."""
    seqs = [p + t[:-1] for p, t in ex] * n_copies
    T = max(len(t) for _, t in ex)
    ids, mask, pos = model.pad_batch(seqs)
    with intervene(model, spec or {}):
        logits = model.forward(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=T).logits
    logp = torch.log_softmax(logits.float(), -1)
    lp = np.zeros(len(seqs))
    ok = np.zeros(len(seqs), dtype=bool)
    for r, (_, t) in enumerate(ex * n_copies):
        rows = logp[r, T - len(t):]
        tt = torch.tensor(t, device=rows.device)
        lp[r] = float(rows.gather(-1, tt[:, None]).sum())
        ok[r] = bool((rows.argmax(-1) == tt).all())
    B = len(ex)
    return lp.reshape(n_copies, B), ok.reshape(n_copies, B)


def task_metric(model: Model, prompts: Sequence[str], targets: Sequence[str], *,
                interventions: dict[str, Any] | None = None, batch_size: int = 16) -> dict[str, float]:
    """Mean target log-probability and accuracy (all target tokens greedy-correct)."""
    check_batch_size(batch_size, "batch_size")
    ex = _examples(model, prompts, targets)
    lps, oks = [], []
    for s in range(0, len(ex), batch_size):
        lp, ok = _metric_rows(model, ex[s:s + batch_size], interventions)
        lps.append(lp[0])
        oks.append(ok[0])
    return {"logprob": float(np.concatenate(lps).mean()), "accuracy": float(np.concatenate(oks).mean())}


def _ablation_spec(sm: Any, heads: Sequence[tuple[int, int]], values: torch.Tensor | None,
                   rows: Sequence[int] | None = None) -> dict[str, list[Any]]:
    spec: dict[str, list[Any]] = {}
    for layer, h in heads:
        if not (0 <= layer < sm.n_layers and 0 <= h < sm.n_heads):
            raise InputError(f"head ({layer}, {h}) is out of range ({sm.n_layers} layers × {sm.n_heads} heads)")
        v = values[layer, h] if values is not None else 0.0
        spec.setdefault(sm.name("attn.head_out", layer), []).append(Replace(heads=[h], rows=rows, value=v))
    return spec


def ablate_heads(model: Model, heads: Sequence[tuple[int, int]], prompts: Sequence[str], targets: Sequence[str],
                 *, how: str = "mean", means: torch.Tensor | None = None, batch_size: int = 16) -> dict[str, float]:
    """Task metric with ``heads`` ablated together, and without.

    Returns:
        ``{"logprob", "accuracy", "base_logprob", "base_accuracy"}``.
    """
    sm = site_map(model)
    values = _head_values(model, how, means, prompts)
    spec = _ablation_spec(sm, [(int(a), int(b)) for a, b in heads], values)
    base = task_metric(model, prompts, targets, batch_size=batch_size)
    abl = task_metric(model, prompts, targets, interventions=spec, batch_size=batch_size)
    return {**abl, "base_logprob": base["logprob"], "base_accuracy": base["accuracy"]}


def head_ablation_effects(model: Model, prompts: Sequence[str], targets: Sequence[str], *, how: str = "mean",
                          means: torch.Tensor | None = None, batch_size: int = 64,
                          progress: bool = False) -> np.ndarray:
    """Change of mean target log-prob when each head alone is ablated: ``[n_layers, n_heads]``.

    Batched: the examples are copied once per head of a chunk and each copy ablates its head.
    """
    check_batch_size(batch_size, "batch_size")
    sm = site_map(model)
    ex = _examples(model, prompts, targets)
    values = _head_values(model, how, means, prompts)
    heads = [(layer, h) for layer in range(sm.n_layers) for h in range(sm.n_heads)]
    base = np.concatenate([_metric_rows(model, ex[s:s + batch_size], None)[0][0]
                           for s in range(0, len(ex), batch_size)]).mean()
    effect = np.zeros(len(heads))
    ex_chunk = max(1, min(len(ex), batch_size))
    per = max(1, batch_size // ex_chunk)
    bar = tqdm(total=len(heads), desc="head ablation", disable=None if progress else True, leave=False)
    try:
        sums = np.zeros(len(heads))
        for s in range(0, len(ex), ex_chunk):
            part = ex[s:s + ex_chunk]
            B = len(part)
            for j0 in range(0, len(heads), per):
                hs = heads[j0:j0 + per]
                spec: dict[str, list[Any]] = {}
                for c, hd in enumerate(hs):
                    for k, v in _ablation_spec(sm, [hd], values, rows=list(range(c * B, (c + 1) * B))).items():
                        spec.setdefault(k, []).extend(v)
                lp, _ = _metric_rows(model, part, spec, n_copies=len(hs))
                sums[j0:j0 + len(hs)] += lp.sum(1)
                if s == 0:
                    bar.update(len(hs))
        effect = sums / len(ex) - base
    finally:
        bar.close()
    return effect.reshape(sm.n_layers, sm.n_heads).astype(np.float32)


def random_heads_control(model: Model, k: int, prompts: Sequence[str], targets: Sequence[str], *,
                         n_draws: int = 10, how: str = "mean", seed: int = 0,
                         exclude: Sequence[tuple[int, int]] = (), means: torch.Tensor | None = None,
                         batch_size: int = 16) -> list[dict[str, Any]]:
    """Ablate ``n_draws`` random sets of ``k`` heads (not in ``exclude``): a baseline for a chosen set."""
    sm = site_map(model)
    pool = [(layer, h) for layer in range(sm.n_layers) for h in range(sm.n_heads) if (layer, h) not in set(exclude)]
    if k < 1 or k > len(pool):
        raise InputError(f"k must be in 1..{len(pool)}")
    values = _head_values(model, how, means, prompts)
    rng = np.random.default_rng(seed)
    base = task_metric(model, prompts, targets, batch_size=batch_size)
    out: list[dict[str, Any]] = []
    for _ in range(n_draws):
        pick = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        spec = _ablation_spec(sm, pick, values)
        res: dict[str, Any] = task_metric(model, prompts, targets, interventions=spec, batch_size=batch_size)
        res.update(base_logprob=base["logprob"], base_accuracy=base["accuracy"], heads=pick)
        out.append(res)
    return out
