"""Long shared prefixes from the KV cache: the stem path behind ``score_rows``.

Packed tree attention (:mod:`~lmxray.attribution._prefix`) fits a token trie into rows a few
hundred positions wide; a prompt of thousands of tokens does not fit, so its perturbations need
another way to share the unchanged prefix. Here:

1. **Anchors.** Among the rows (sorted lexicographically) an *anchor* is the row whose longest
   common prefixes with the others cover the most positions (the unperturbed prompt, for
   occlusion; the full coalition, for sentence games). Rows that share at least a stem of
   ``min_stem`` tokens with it are *served* by it; the others look for their own anchor (a
   document game's coalitions that drop the first document share the stem of the second one),
   up to a few anchors. What is left goes to packing or plain batches.
2. **One pass per anchor** computes its keys and values (and its own targets).
3. **Stems.** Served rows are sorted by their first changed position and cut into groups: a
   group starts from the shortest stem among its rows, takes the anchor's cache up to there,
   expanded over the group (no copy until attention), and computes every row only from there,
   right-padded (a causal model never lets a real position see the padding after it), with
   position ids continuing the stem. The group size comes from the memory budget (the cache
   of each row is materialised inside attention) and the model; a new group starts when the
   stems drift apart, so little is recomputed.

The first group of every model is checked against a plain forward of one of its rows; a
mismatch or an architecture whose forward rejects a cache switches the model to the other
paths with a warning. Models with a sliding window shorter than the rows never get here.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DynamicCache

from ..memory import rows_that_fit

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model
    from ._budget import ScoreRow
    from .base import Context

__all__ = ["StemPlan", "plan_stems", "stem_cost", "stem_groups", "cache_layers", "expanded_cache",
           "kv_bytes_per_token", "cache_kwarg", "plain_row_cost", "split_prefix", "split_usable",
           "KV_VERIFIED", "SPLIT_VERIFIED"]

MAX_ANCHORS = 8
_CANDIDATES = 16
# per native model: True = cache reuse verified, False = disabled (mismatch or unsupported)
KV_VERIFIED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@dataclass
class StemPlan:
    """One anchor row and the rows computed on its cache (``stems[k]``: shared positions)."""

    anchor: int
    served: list[int] = field(default_factory=list)
    stems: list[int] = field(default_factory=list)


def _matrix(rows: Sequence[ScoreRow], idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(rows[i].input_ids) for i in idx], dtype=np.int64)
    mat = np.full((len(idx), max(1, int(lens.max(initial=1)))), -1, dtype=np.int64)
    for k, i in enumerate(idx):
        mat[k, : lens[k]] = rows[i].input_ids
    return mat, lens


def _usable_stems(mat: np.ndarray, lens: np.ndarray, n_targets: np.ndarray, c: int) -> np.ndarray:
    """Positions each row can take from row ``c``'s cache: its common prefix with ``c``, short
    enough that every position predicting a target is still computed."""
    lim = np.minimum(lens, lens[c])
    eq = (mat == mat[c][None, :]) & (np.arange(mat.shape[1])[None, :] < lim[:, None])
    lcp = np.where(eq.all(axis=1), lim, np.argmin(eq, axis=1))
    return np.minimum(lcp, lens - n_targets).astype(np.int64)


def plan_stems(rows: Sequence[ScoreRow], idx: Sequence[int], min_stem: int) -> tuple[list[StemPlan], list[int]]:
    """Anchors and their served rows (see the module docstring), and the rows left over."""
    rest = sorted(idx, key=lambda i: rows[i].input_ids)
    plans: list[StemPlan] = []
    for _ in range(MAX_ANCHORS):
        if len(rest) < 2:
            break
        mat, lens = _matrix(rows, rest)
        n_t = np.array([len(rows[i].targets) for i in rest], dtype=np.int64)
        n = len(rest)
        cands = set(np.linspace(0, n - 1, min(n, _CANDIDATES)).astype(int).tolist())
        cands.add(int(np.argmax(lens)))
        best, best_gain, best_stems = -1, 0, np.zeros(0, np.int64)
        for c in sorted(cands):
            st = _usable_stems(mat, lens, n_t, c)
            st[c] = 0
            gain = int(st[st >= min_stem].sum())
            if gain > best_gain:
                best, best_gain, best_stems = c, gain, st
        if best < 0 or best_gain < lens[best]:  # the stems would not repay the anchor's pass
            break
        take = np.flatnonzero(best_stems >= min_stem)
        plans.append(StemPlan(rest[best], [rest[k] for k in take], best_stems[take].tolist()))
        gone = {best, *take.tolist()}
        rest = [r for k, r in enumerate(rest) if k not in gone]
    return plans, rest


def per_row_bytes(model: Model, stem: int, suffix: int, n_keep: int, kv_per_token: float) -> float:
    """Memory of one row of a stem group: its copy of the cache inside attention (and the
    concatenation the cache keeps), two layers of activations over the suffix, kept logits."""
    elt = torch.finfo(model.dtype).bits // 8
    d, h = model.d_model, model.n_heads
    cache = 2.0 * (stem + suffix) * kv_per_token
    act = 2 * suffix * (34 * d + 5 * h * (stem + suffix)) * elt / 2
    return cache + act + n_keep * model.vocab_size * 4 * 2 + 1


def stem_groups(
    model: Model, rows: Sequence[ScoreRow], plan: StemPlan, ctx: Context, kv_per_token: float,
    overhead: float,
) -> list[tuple[int, list[int]]]:
    """``[(stem, rows)]``: served rows by decreasing stem, in memory-sized groups; a new group
    starts when the stems drift apart (when recomputing the gap, in token positions, would cost
    more than another pass's ``overhead`` and 5% of the group's work)."""
    order = sorted(zip(plan.stems, plan.served, strict=True), key=lambda t: (-t[0], t[1]))
    groups: list[tuple[int, list[int]]] = []
    top = low = 0
    cur: list[int] = []
    cap = 1
    for stem, r in order:
        if cur:
            longest = max(len(rows[i].input_ids) for i in (*cur, r))
            waste = (top - stem) * (len(cur) + 1)  # positions recomputed by starting lower
            if len(cur) >= cap or waste > max(overhead, 0.05 * (len(cur) + 1) * (longest - stem)):
                groups.append((low, cur))
                cur = []
        if not cur:
            top = stem
            keep = max(1, len(rows[r].targets))
            suffix = len(rows[r].input_ids) - stem
            cap = rows_that_fit(
                per_row_bytes(model, stem, suffix, keep, kv_per_token),
                device=model.devices, memory_budget=ctx.memory_budget,
                batch_size=ctx.internal_batch_size,
            )
            if ctx.internal_batch_size is None and model.device.type == "cpu":
                cap = min(cap, _cpu_rows(model, suffix))
        cur.append(r)
        low = stem
    if cur:
        groups.append((low, cur))
    return groups


CPU_GROUP_BYTES = 24 << 20
"""On CPU, a stem group's widest activation (the MLP's hidden, ``rows x suffix x 4 d``) is kept
near this size: larger groups run slower per position (measured on the bench GPT-2 6 x 512 at
1024 tokens: 16 rows of 546 positions 2.36 s, 4 rows 2.13 s for the same 16 rows)."""


def _cpu_rows(model: Model, suffix: int) -> int:
    elt = torch.finfo(model.dtype).bits // 8
    return max(1, int(CPU_GROUP_BYTES // max(1, suffix * 4 * model.d_model * elt)))


def stem_cost(model: Model, rows: Sequence[ScoreRow], plans: Sequence[StemPlan],
              overhead: float) -> float:
    """Estimated cost in token positions of serving ``plans``: each anchor in full, then each
    row from its stem, its queries attending to the whole row (a plain causal row attends to
    half of it on average, see :func:`plain_row_cost`); groups of about 32 rows share a pass's
    ``overhead``."""
    total = 0.0
    d = model.d_model
    for pl in plans:
        la = len(rows[pl.anchor].input_ids)
        total += overhead + plain_row_cost(la, d)
        for st, r in zip(pl.stems, pl.served, strict=True):
            ln = len(rows[r].input_ids)
            total += (ln - st) * (1 + ln / (8.0 * d)) + overhead / 32
    return total


def plain_row_cost(length: int, d_model: int) -> float:
    """Cost in token positions of one row computed in full (causal attention included)."""
    return length * (1 + length / (16.0 * d_model))


# ------------------------------------------------------------------ split prefix attention
SPLIT_VERIFIED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
"""Per native model: True = split prefix attention reproduces plain scoring, False = not used."""
_SPLIT = "lmxray_split_prefix"
_PREFIX_KV: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "lmxray_prefix_kv", default=None)  # (layers, stem, last layer index, reads)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
            scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output [B, H, L, D], log-sum-exp [B, H, L])`` of softmax attention (keys and values
    repeated to the query heads when grouped)."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out, lse = _FLASH_CPU(q, k, v, 0.0, causal, attn_mask=None, scale=scale)  # type: ignore[misc]
    return out, lse


def _split_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of a stem group's suffixes (``query``/``key``/``value``: ``[rows, heads,
    suffix, d]``) over the shared stem and their own causal suffix, as two parts merged by their
    log-sum-exp (exact; Hydragen's decomposition, Juravsky et al. 2024): every row's queries
    against the one stem at once (one wide product, the stem never copied per row, no mask),
    then each row's suffix causally (the masked half skipped)."""
    layers, stem, last, reads = _PREFIX_KV.get()  # type: ignore[misc]
    pk, pv = layers[module.layer_idx]
    if module.layer_idx == last and reads:
        return _read_queries_only(query, key, value, pk[:1, :, :stem], pv[:1, :, :stem], reads,
                                  scaling)
    b, h, s, d = query.shape
    flat = query.transpose(0, 1).reshape(1, h, b * s, d)
    o1, l1 = _attend(flat, pk[:1, :, :stem], pv[:1, :, :stem], False, scaling)
    o1 = o1.reshape(h, b, s, d).transpose(0, 1)
    l1 = l1.reshape(h, b, s).transpose(0, 1)
    o2, l2 = _attend(query, key, value, True, scaling)
    return _merge(o1, l1, o2, l2).transpose(1, 2).contiguous(), None


def _merge(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Two attention parts over disjoint keys merged by their log-sum-exp."""
    top = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - top), torch.exp(l2 - top)
    return (o1 * w1[..., None] + o2 * w2[..., None]) / (w1 + w2)[..., None]


def _read_queries_only(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       pk: torch.Tensor, pv: torch.Tensor, reads: list[tuple[int, list[int]]],
                       scaling: float | None) -> tuple[torch.Tensor, None]:
    """The last layer's attention at the read positions only (``reads``: ``(row, suffix
    positions)``); zeros elsewhere, which no later layer reads."""
    b, h, s, d = query.shape
    out = query.new_zeros(b, s, h, d)
    for j, pos in reads:
        if not pos:
            continue
        n = max(pos) + 1
        q = query[j:j + 1, :, pos]
        o1, l1 = _attend(q, pk, pv, False, scaling)
        rep = h // key.shape[1]
        kj = key[j:j + 1, :, :n].repeat_interleave(rep, dim=1)
        vj = value[j:j + 1, :, :n].repeat_interleave(rep, dim=1)
        scores = (q @ kj.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
        ahead = torch.arange(n, device=q.device)[None, :] > torch.as_tensor(pos, device=q.device)[:, None]
        scores = scores.masked_fill(ahead, float("-inf"))
        l2 = torch.logsumexp(scores, -1)
        o2 = torch.softmax(scores, -1) @ vj
        out[j, pos] = _merge(o1, l1, o2, l2)[0].transpose(0, 1)
    return out, None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def split_usable(model: Model) -> bool:
    """Whether stem groups may use split prefix attention: CPU (its flash kernel returns the
    log-sum-exp), the model on SDPA without logit soft-capping, not switched off."""
    cfg = model.config
    return (_FLASH_CPU is not None and model.device.type == "cpu"
            and SPLIT_VERIFIED.get(model.hf) is not False
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and not getattr(cfg, "attn_logit_softcapping", None))


@contextlib.contextmanager
def split_prefix(model: Model, layers: list[tuple[torch.Tensor, torch.Tensor]], stem: int,
                 reads: list[tuple[int, list[int]]] | None = None) -> Iterator[None]:
    """Inside: the model's attention is :func:`_split_attention` over ``layers[:stem]`` (run the
    forward without a cache, position ids from ``stem`` on); with ``reads`` (``(row, suffix
    positions)`` whose logits are read), the last layer attends from those positions only."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(_SPLIT, _split_attention)
    AttentionMaskInterface.register(_SPLIT, _no_mask)
    token = _PREFIX_KV.set((layers, stem, len(layers) - 1, reads))
    cfg = model.hf.config
    before = cfg._attn_implementation
    try:
        model.hf.set_attn_implementation(_SPLIT)
        yield
    finally:
        model.hf.set_attn_implementation(before)
        _PREFIX_KV.reset(token)


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(keys, values)]`` per layer of a transformers cache (4.5x and 5.x layouts)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(lay.keys, lay.values) for lay in layers]
    if hasattr(cache, "key_cache"):  # pragma: no cover - transformers < 4.56
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]  # pragma: no cover - legacy tuples


def expanded_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], stem: int, batch: int) -> Any:
    """A fresh cache holding the first ``stem`` positions of ``layers`` for ``batch`` rows."""
    data = [
        (k[:, :, :stem].expand(batch, -1, -1, -1), v[:, :, :stem].expand(batch, -1, -1, -1))
        for k, v in layers
    ]
    return DynamicCache(data)


def cache_kwarg(model: Model) -> str:
    """The forward argument that takes a cache (``cache`` in newer transformers)."""
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def kv_bytes_per_token(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    n = max(1, int(layers[0][0].shape[-2]))
    return float(sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)) / n

