"""Prefix KV-cache reuse behind :func:`~lmxray.attribution._engine.score_sequences`.

Perturbation methods score many sequences that agree with one another up to some position:
occluding token ``p`` leaves tokens ``0..p-1`` as they were, and most coalitions of a Shapley or
LIME sample share a long stem with the full input or with the empty one. A causal model computes
the same keys and values for a shared prefix in every sequence, so this module computes them once.

How (all automatic, from the token ids alone):

1. Identical rows are scored once.
2. Rows are sorted lexicographically; the longest common prefix (LCP) of neighbours gives, for
   each row, the sum of its LCPs with all others in O(n) (range minima over the LCP array).
   The row with the largest sum becomes a *source*; every row sharing a useful prefix ``P`` with it
   becomes its *dependent*; the rest is planned again (a few rounds), and what is left is scored
   plainly.
3. Sources run as ordinary left-padded batches with ``use_cache=True`` (their own values come
   from that pass). Dependents run only their suffix ``ids[P:]``: in one batch, row ``i`` gets its
   source's cached keys/values ``[0, P_i)`` padded to the batch's ``P_max``, with the gap
   ``[P_i, P_max)`` and the left padding of the suffix masked out of attention, and explicit
   position ids ``P_i, P_i + 1, ...``. Suffixes are bucketed by length (dynamic programming over
   a per-forward overhead and the padded positions) within a memory-bounded chunk size.
4. The first reuse for every model is checked against a plain forward of the same row; any
   mismatch (an architecture whose positions do not come from ``position_ids``, e.g. ALiBi built
   from the attention mask) switches the model to plain scoring with a warning.

Positions computed: every source in full, every dependent from its first differing token on
(``sum len(src) + sum (len_i - P_i)`` instead of ``sum len_i``); :func:`count_forward_tokens`
reports both. Values equal full recomputation to float rounding (tests assert <= 1e-5).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..targets import evaluate_target

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model
    from ._engine import ScoreRow
    from .base import Context

__all__ = ["ForwardStats", "count_forward_tokens", "prefix_cache", "score_rows"]

_MODES = ("auto", "on", "off")
_mode: contextvars.ContextVar[str] = contextvars.ContextVar("lmxray_prefix_mode", default="auto")
_stats: contextvars.ContextVar[tuple[ForwardStats, ...]] = contextvars.ContextVar(
    "lmxray_prefix_stats", default=()
)
# per native model: True = reuse verified, False = reuse disabled (mismatch or unsupported)
_VERIFIED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

_PLAN_BLOCK = 4096  # rows planned together (bounds the planner's memory: block x longest row)
_MAX_ROUNDS = 16
_PROGRESS_MIN_ROWS = 1024


@dataclass
class ForwardStats:
    """Token positions run through the model (accumulated over ``score_sequences`` calls).

    Attributes:
        rows: sequences asked for; ``unique_rows``: after removing duplicates.
        naive_tokens: ``sum len(input_ids)`` over all rows (a plain batched scorer's work).
        computed_tokens: positions actually computed (sources in full, dependents' suffixes).
        padded_tokens: computed positions including padding (the real cost of the batches).
        reused_tokens: positions read from a cached prefix instead of recomputed.
        forwards: forward passes.
    """

    rows: int = 0
    unique_rows: int = 0
    naive_tokens: int = 0
    computed_tokens: int = 0
    padded_tokens: int = 0
    reused_tokens: int = 0
    forwards: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}

    def _add(self, **kw: int) -> None:
        for k, v in kw.items():
            setattr(self, k, getattr(self, k) + int(v))


@contextlib.contextmanager
def count_forward_tokens() -> Iterator[ForwardStats]:
    """Count the token positions that scoring computes inside the ``with`` block.

    Example:
        >>> with count_forward_tokens() as st:  # doctest: +SKIP
        ...     m.attribute(prompt, target=t, method="occlusion")
        >>> st.computed_tokens, st.naive_tokens  # doctest: +SKIP
    """
    st = ForwardStats()
    token = _stats.set((*_stats.get(), st))
    try:
        yield st
    finally:
        _stats.reset(token)


def _record(**kw: int) -> None:
    for st in _stats.get():
        st._add(**kw)


@contextlib.contextmanager
def prefix_cache(mode: str) -> Iterator[None]:
    """Choose prefix reuse inside the block: ``"auto"`` (default: when the plan saves work),
    ``"on"`` (whenever the model supports it; for tests) or ``"off"`` (plain batches)."""
    from ..errors import InputError

    if mode not in _MODES:
        raise InputError(f"prefix cache mode must be one of {', '.join(_MODES)}, got {mode!r}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


# ---------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    sources: list[int] = field(default_factory=list)
    deps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # src -> [(row, P)]
    plain: list[int] = field(default_factory=list)


def _id_matrix(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    mat = np.full((len(seqs), max(1, int(lens.max(initial=1)))), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        mat[i, : len(s)] = s
    return mat, lens


def _lcp(mat: np.ndarray, lens: np.ndarray, a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """Longest common prefix of rows ``a`` with rows ``b`` (or one row ``b``)."""
    x = mat[a]
    y = mat[b][None, :] if np.isscalar(b) or np.ndim(b) == 0 else mat[b]
    lim = np.minimum(lens[a], lens[b])
    eq = x == y
    eq &= np.arange(mat.shape[1])[None, :] < lim[:, None]
    first_bad = np.argmin(eq, axis=1)
    return np.where(eq.all(axis=1), lim, first_bad).astype(np.int64)


def _sum_lcp(adj: np.ndarray) -> np.ndarray:
    """For rows in lexicographic order with neighbour LCPs ``adj`` [n-1], ``sum_j LCP(i, j)``.

    ``LCP(i, j)`` is the minimum of ``adj`` between them; with the next smaller element the sums
    over all ``j > i`` (and ``j < i``) follow in O(n).
    """
    n = len(adj) + 1
    right = np.zeros(n, dtype=np.float64)
    stack: list[int] = []
    nxt = np.full(n - 1, n - 1, dtype=np.int64)
    for k in range(n - 2, -1, -1):
        while stack and adj[stack[-1]] >= adj[k]:
            stack.pop()
        nxt[k] = stack[-1] if stack else n - 1
        stack.append(k)
        right[k] = adj[k] * (nxt[k] - k) + right[nxt[k]]
    rev = adj[::-1]
    left_r = np.zeros(n, dtype=np.float64)
    stack = []
    for k in range(n - 2, -1, -1):
        while stack and rev[stack[-1]] >= rev[k]:
            stack.pop()
        nk = stack[-1] if stack else n - 1
        stack.append(k)
        left_r[k] = rev[k] * (nk - k) + left_r[nk]
    return right + left_r[::-1]


def _plan(rows: Sequence[ScoreRow], idx: Sequence[int]) -> _Plan:
    """Sources, their dependents with shared prefix lengths, and rows to score plainly."""
    plan = _Plan()
    idx = sorted(idx, key=lambda i: rows[i].input_ids)
    if len(idx) < 2:
        plan.plain = list(idx)
        return plan
    mat, lens = _id_matrix([rows[i].input_ids for i in idx])
    # a dependent's suffix must hold every position that predicts a target
    cap = lens - np.array([len(rows[i].targets) for i in idx], dtype=np.int64)
    loc = np.arange(len(idx))
    adj0 = _lcp(mat, lens, loc[:-1], loc[1:])
    best = np.zeros(len(idx), dtype=np.int64)
    best[:-1] = adj0
    best[1:] = np.maximum(best[1:], adj0)
    best = np.minimum(best, cap)
    rem = loc
    for _ in range(_MAX_ROUNDS):
        if len(rem) < 2:
            break
        adj = _lcp(mat, lens, rem[:-1], rem[1:])
        # a source gains what others share with it and forgoes its own best reuse
        tot = _sum_lcp(adj) - best[rem]
        k = int(np.argmax(tot))
        if tot[k] <= 0:
            break
        s = int(rem[k])
        shared = np.minimum(_lcp(mat, lens, rem, s), cap[rem])
        take = (shared >= np.maximum(1, (best[rem] + 1) // 2)) & (rem != s)
        if not take.any():
            break
        src = idx[s]
        plan.sources.append(src)
        plan.deps[src] = [(idx[int(j)], int(p)) for j, p in zip(rem[take], shared[take], strict=True)]
        rem = rem[~take & (rem != s)]
    plan.plain = [idx[int(j)] for j in rem]
    return plan


def _buckets(m: np.ndarray, overhead: float, cap: int) -> list[tuple[int, int]]:
    """Split sorted suffix lengths ``m`` into contiguous buckets minimising
    ``sum(overhead + size * max_len)`` with at most ``cap`` rows per bucket."""
    n = len(m)
    dp = np.zeros(n + 1)
    arg = np.zeros(n + 1, dtype=np.int64)
    for k in range(1, n + 1):
        lo = max(0, k - cap)
        js = np.arange(lo, k)
        vals = dp[js] + overhead + (k - js) * m[k - 1]
        j = int(np.argmin(vals))
        dp[k] = vals[j]
        arg[k] = js[j]
    out = []
    k = n
    while k > 0:
        out.append((int(arg[k]), k))
        k = int(arg[k])
    return out[::-1]


# ---------------------------------------------------------------------------------- running
def _cache_kwarg(model: Model) -> str | None:
    params = inspect.signature(model.hf.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _kv_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):  # pragma: no cover - older transformers
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(kv[0], kv[1]) for kv in cache]  # pragma: no cover - legacy tuples


def _output_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        c = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if c is not None:
            return c
    raise RuntimeError("the model returned no KV cache")


def _supported(model: Model) -> bool:
    hf = model.hf
    if _VERIFIED.get(hf) is False:
        return False
    if not model._accepts_position_ids or _cache_kwarg(model) is None:
        return False
    cfg = hf.config
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "alibi", False):
        return False
    return getattr(cfg, "model_type", "") not in {"bloom", "mpt", "falcon_mamba", "mamba", "mamba2"}


def _overhead(model: Model) -> float:
    """A forward pass's fixed cost in token positions: it sets how finely suffixes are bucketed
    and whether reuse pays. Estimated as (per-call time) / (per-token time) from the parameter
    count; per-call time grows with depth, per-token time with width squared."""
    d, layers = model.d_model, model.n_layers
    flops = 2.0 * layers * 12 * d * d + 1.0
    if model.device.type == "cuda":
        per_call, rate = 2e-3 + 3e-4 * layers, 2e13
    else:
        per_call, rate = 4e-3 + 1.5e-3 * layers, 1e11
    return float(min(1e5, max(4.0, per_call * rate / flops)))


class _Fallback(Exception):
    pass


def _no_foil(row: ScoreRow) -> ScoreRow:
    from ._engine import ScoreRow

    return ScoreRow(row.input_ids, row.targets)


def _foil_as_target(row: ScoreRow) -> ScoreRow:
    from ._engine import ScoreRow

    return ScoreRow(row.input_ids, list(row.foils or []))


class _Runner:
    def __init__(self, model: Model, rows: Sequence[ScoreRow], ctx: Context, out: list) -> None:
        from ._engine import _target_tensors

        self.model, self.rows, self.ctx, self.out = model, rows, ctx, out
        self._target_tensors = _target_tensors
        self.cache_kw = _cache_kwarg(model)
        self.bar: Any = None

    def _tick(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _values(self, logits: torch.Tensor, idx: Sequence[int], t_max: int) -> None:
        """Target-function values of the right-aligned target steps of rows ``idx``; a foil is
        subtracted only in the rows that have one (rows with and without foils may share a batch)."""
        chunk = [self.rows[i] for i in idx]
        tgt, _, _ = self._target_tensors([_no_foil(r) for r in chunk], t_max, logits.device)
        values = evaluate_target(self.ctx.target_fn, logits, tgt)
        with_foil = [j for j, r in enumerate(chunk) if r.foils is not None]
        if with_foil:
            sub = [chunk[j] for j in with_foil]
            foil, _, _ = self._target_tensors([_foil_as_target(r) for r in sub], t_max, logits.device)
            sel = torch.as_tensor(with_foil, device=logits.device)
            values[sel] = values[sel] - self.ctx.target_fn(logits[sel], foil)
        values = values.float().cpu().numpy()
        for j, i in enumerate(idx):
            n_t = len(self.rows[i].targets)
            self.out[i] = values[j, t_max - n_t:].astype(np.float32)
        self._tick(len(idx))

    def plain(self, idx: Sequence[int]) -> None:
        """Left-padded batches sorted by length, chunked by the memory budget (no reuse)."""
        rows, model = self.rows, self.model
        for chunk in _plain_chunks(model, rows, idx, self.ctx):
            t_max = max(len(rows[i].targets) for i in chunk)
            seqs = [rows[i].input_ids for i in chunk]
            ids, mask, pos = model.pad_batch(seqs)
            logits = model.forward(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max
            ).logits
            _record(
                computed_tokens=sum(len(s) for s in seqs), padded_tokens=ids.numel(), forwards=1
            )
            self._values(logits, chunk, t_max)

    def sources(self, src: Sequence[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
        """Score ``src`` in one left-padded batch and keep its KV cache (and each row's offset)."""
        rows, model = self.rows, self.model
        t_max = max(len(rows[i].targets) for i in src)
        seqs = [rows[i].input_ids for i in src]
        ids, mask, pos = model.pad_batch(seqs)
        out = model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max,
            use_cache=True,
        )
        _record(computed_tokens=sum(len(s) for s in seqs), padded_tokens=ids.numel(), forwards=1)
        self._values(out.logits, src, t_max)
        kv = _kv_layers(_output_cache(out))
        offsets = [ids.shape[1] - len(s) for s in seqs]
        return kv, offsets

    def dependents(
        self,
        deps: Sequence[tuple[int, int, int]],
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        offsets: Sequence[int],
    ) -> None:
        """Score rows ``(row, source slot, P)`` from their suffix ``ids[P:]`` and the cached prefix."""
        rows, model = self.rows, self.model
        dev = model.device
        m = [len(rows[r].input_ids) - p for r, _, p in deps]
        p_max = max(p for _, _, p in deps)
        m_max = max(m)
        t_max = max(len(rows[r].targets) for r, _, _ in deps)
        b = len(deps)
        ids = torch.full((b, m_max), model.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, p_max + m_max), dtype=torch.long)
        pos = torch.zeros((b, m_max), dtype=torch.long)
        slot_rows: dict[int, list[int]] = {}
        for j, ((r, slot, p), mj) in enumerate(zip(deps, m, strict=True)):
            ids[j, m_max - mj:] = torch.as_tensor(rows[r].input_ids[p:])
            mask[j, :p] = 1
            mask[j, p_max + m_max - mj:] = 1
            pos[j, m_max - mj:] = torch.arange(p, p + mj)
            pos[j, : m_max - mj] = p
            slot_rows.setdefault(slot, []).append(j)
        kw: dict[str, Any] = {}
        if p_max > 0:
            from transformers import DynamicCache

            l_src = kv[0][0].shape[2]
            data = []
            for k, v in kv:
                kb = k.new_zeros((b, k.shape[1], p_max, k.shape[3]))
                vb = v.new_zeros((b, v.shape[1], p_max, v.shape[3]))
                for slot, js in slot_rows.items():
                    a = offsets[slot]
                    n = min(p_max, l_src - a)  # slots past the source's end stay zero (masked)
                    sel = torch.as_tensor(js, device=dev)
                    kb[sel, :, :n] = k[slot, :, a:a + n].unsqueeze(0)
                    vb[sel, :, :n] = v[slot, :, a:a + n].unsqueeze(0)
                data.append((kb, vb))
            kw[self.cache_kw or "past_key_values"] = DynamicCache(ddp_cache_data=data)
            kw["use_cache"] = True
        logits = model.forward(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
            logits_to_keep=t_max, **kw,
        ).logits
        _record(
            computed_tokens=sum(m), padded_tokens=b * m_max, forwards=1,
            reused_tokens=sum(p for _, _, p in deps),
        )
        idx = [r for r, _, _ in deps]
        if p_max > 0 and self.model.hf not in _VERIFIED:
            self._verify(logits, deps, t_max)
        self._values(logits, idx, t_max)

    def _verify(self, logits: torch.Tensor, deps: Sequence[tuple[int, int, int]], t_max: int) -> None:
        """Compare the first reused row with a plain forward once per model."""
        j = max(range(len(deps)), key=lambda k: deps[k][2])
        r = deps[j][0]
        row = self.rows[r]
        ids, mask, pos = self.model.pad_batch([row.input_ids])
        ref = self.model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max
        ).logits
        a = logits[j, t_max - len(row.targets):].float()
        b = ref[0, t_max - len(row.targets):].float()
        tol = 1e-4 if self.model.dtype == torch.float32 else 5e-2
        ok = bool(torch.allclose(a, b, atol=tol, rtol=tol))
        _VERIFIED[self.model.hf] = ok
        if not ok:
            warnings.warn(
                f"prefix KV-cache reuse does not reproduce plain scoring for {type(self.model.hf).__name__}; "
                "scoring without it (slower, same numbers)",
                RuntimeWarning,
                stacklevel=6,
            )
            raise _Fallback


def _kv_bytes_per_token(model: Model) -> int:
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or model.n_heads
    head_dim = getattr(cfg, "head_dim", None) or model.d_model // max(1, model.n_heads)
    elt = torch.finfo(model.dtype).bits // 8
    return int(2 * model.n_layers * heads * head_dim * elt)


@dataclass
class _Block:
    sources: list[int]
    deps: list[tuple[int, int, int]]  # (row, source slot, P), sorted by suffix length
    buckets: list[tuple[int, int]]


def _plain_chunks(model: Model, rows: Sequence[ScoreRow], idx: Sequence[int], ctx: Context) -> list[list[int]]:
    """Length-sorted chunks of ``idx`` as the plain path runs them (memory-bounded)."""
    from ._engine import _MAX_ROWS, rows_per_chunk

    order = sorted(idx, key=lambda i: len(rows[i].input_ids))
    chunks, start = [], 0
    while start < len(order):
        longest = len(rows[order[min(len(order) - 1, start + _MAX_ROWS - 1)]].input_ids)
        keep = max(1, max(len(rows[i].targets) for i in order[start:start + _MAX_ROWS]))
        n = rows_per_chunk(model, longest, keep, with_grad=False, ctx=ctx)
        chunks.append(order[start:start + n])
        start += n
    return chunks


def _chunks_cost(rows: Sequence[ScoreRow], chunks: Sequence[Sequence[int]], overhead: float) -> float:
    return float(sum(overhead + len(c) * max(len(rows[i].input_ids) for i in c) for c in chunks))


def _schedule(model: Model, rows: Sequence[ScoreRow], plan: _Plan, ctx: Context) -> tuple[list[_Block], float]:
    """Source blocks (memory-bounded, KV cache included) with their dependents' buckets, and the
    estimated cost in token positions (a forward pass's overhead counted in positions too)."""
    from ._engine import _available_memory, rows_per_chunk

    budget = ctx.memory_budget or _available_memory(model.device)
    kv_tok = _kv_bytes_per_token(model)
    overhead = _overhead(model)
    blocks, cost = [], 0.0
    for chunk in _plain_chunks(model, rows, plan.sources, ctx):
        longest = max(len(rows[i].input_ids) for i in chunk)
        n = max(1, int(budget // 4 // max(1, kv_tok * longest)))
        for a in range(0, len(chunk), n):
            block = chunk[a:a + n]
            cost += overhead + len(block) * max(len(rows[i].input_ids) for i in block)
            deps = [(r, slot, p) for slot, s in enumerate(block) for r, p in plan.deps[s]]
            deps.sort(key=lambda d: len(rows[d[0]].input_ids) - d[2])
            buckets: list[tuple[int, int]] = []
            if deps:
                l_all = max(len(rows[r].input_ids) for r, _, _ in deps)
                t_all = max(len(rows[r].targets) for r, _, _ in deps)
                cap = rows_per_chunk(model, l_all, t_all, with_grad=False, ctx=ctx)
                m = np.array([len(rows[r].input_ids) - p for r, _, p in deps], dtype=np.float64)
                buckets = _buckets(m, overhead, cap)
                cost += sum(overhead + (e - b) * m[e - 1] for b, e in buckets)
            blocks.append(_Block(list(block), deps, buckets))
    return blocks, cost


def _run_blocks(runner: _Runner, blocks: Sequence[_Block]) -> None:
    for blk in blocks:
        kv, offsets = runner.sources(blk.sources)
        for a, b in blk.buckets:
            runner.dependents(blk.deps[a:b], kv, offsets)
        del kv


def score_rows(model: Model, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
    """Target-function values ``[len(row.targets)]`` for each row (see the module docstring)."""
    n = len(rows)
    out: list[np.ndarray | None] = [None] * n
    keys: dict[tuple, int] = {}
    uniq: list[int] = []
    inverse = np.zeros(n, dtype=np.int64)
    for i, r in enumerate(rows):
        key = (tuple(r.input_ids), tuple(r.targets), None if r.foils is None else tuple(r.foils))
        u = keys.get(key)
        if u is None:
            u = keys[key] = len(uniq)
            uniq.append(i)
        inverse[i] = u
    _record(rows=n, unique_rows=len(uniq), naive_tokens=sum(len(r.input_ids) for r in rows))
    todo = [i for i in uniq if len(rows[i].targets)]
    for i in uniq:
        if not len(rows[i].targets):
            out[i] = np.zeros(0, dtype=np.float32)
    runner = _Runner(model, rows, ctx, out)
    mode = _mode.get()
    use = mode != "off" and len(todo) > 1 and _supported(model)
    bar_ctx: Any = contextlib.nullcontext()
    if len(todo) >= _PROGRESS_MIN_ROWS:
        from tqdm.auto import tqdm

        bar_ctx = tqdm(total=len(todo), desc="scoring", unit="seq", leave=False, disable=None)
    with bar_ctx as bar:
        runner.bar = bar if len(todo) >= _PROGRESS_MIN_ROWS else None
        if not use:
            runner.plain(todo)
        else:
            todo.sort(key=lambda i: rows[i].input_ids)
            for b in range(0, len(todo), _PLAN_BLOCK):
                block = todo[b:b + _PLAN_BLOCK]
                plan = _plan(rows, block)
                if not plan.sources:
                    runner.plain(block)
                    continue
                over = _overhead(model)
                blocks, reuse_cost = _schedule(model, rows, plan, ctx)
                plain_rest = _plain_chunks(model, rows, plan.plain, ctx)
                reuse_cost += _chunks_cost(rows, plain_rest, over)
                plain_cost = _chunks_cost(rows, _plain_chunks(model, rows, block, ctx), over)
                if mode == "auto" and reuse_cost > 0.9 * plain_cost:
                    runner.plain(block)
                    continue
                try:
                    _run_blocks(runner, blocks)
                except _Fallback:
                    for i in block:
                        out[i] = None
                    runner.plain(block)
                    continue
                runner.plain(plan.plain)
    res = [out[uniq[inverse[i]]] for i in range(n)]
    return [r if r is not None else np.zeros(0, np.float32) for r in res]
