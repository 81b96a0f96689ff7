"""Prefix sharing behind :func:`~lmxray.attribution._engine.score_sequences`.

Perturbation methods score many sequences that agree with one another up to some position:
occluding token ``p`` leaves tokens ``0..p-1`` as they were, and many coalitions of a Shapley or
LIME sample share a stem with the full input or with the empty one. A causal model computes the
same keys and values for a shared prefix in every sequence; this module computes them once and
lets every sequence that shares the prefix attend to them.

How (automatic, from the token ids alone):

1. Identical rows are scored once.
2. The rows form a token trie (a node per distinct prefix). Sorted lexicographically, each row
   shares with all earlier rows exactly its longest common prefix with the previous one, so
   walking them in that order lays the trie out depth first: each row adds only its new nodes,
   under the path of the previous row. Every node is computed once.
3. Packing (tree attention, as in SpecInfer's token trees): consecutive trie nodes fill packed
   rows of ~``d_model / 2`` positions (a row that starts inside a subtree repeats the shared
   path as its stem). A 4D additive attention mask lets each node attend to itself and its
   ancestors only, and its position id is its depth, so every node sees exactly the sequence it
   has in each row it belongs to: the shared prefix's keys and values are computed once and
   reused by every continuation. One forward pass usually scores all perturbations of a prompt,
   without padding; logits are computed only at nodes that predict a target.
4. The first packed pass for every model is checked against a plain forward of one of its rows;
   a mismatch (an architecture that ignores 4D masks or derives positions from the mask, e.g.
   ALiBi) switches that model to plain scoring with a warning. Rows longer than a model's
   sliding window, everything under ``prefix_cache("off")`` and everything scored while a hook
   is on the model (an intervention's positions are a sequence's own), are scored plainly too.

Positions computed: the trie's nodes plus one stem per packed row, instead of ``sum len_i``;
:func:`count_forward_tokens` reports both. Values equal full recomputation to float rounding (tests assert <= 1e-5 on six families,
transformers 4.57 and 5.x).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, LmxrayError
from ..hooks import is_observer
from ..memory import is_oom, run_chunks
from ..sites import site_map
from ._budget import MAX_ROWS, ScoreRow, rows_per_chunk
from ._stems import (
    KV_VERIFIED,
    SPLIT_VERIFIED,
    StemPlan,
    cache_kwarg,
    cache_layers,
    expanded_cache,
    kv_bytes_per_token,
    plain_row_cost,
    plan_stems,
    split_prefix,
    split_usable,
    stem_cost,
    stem_groups,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model
    from .base import Context

__all__ = ["ForwardStats", "count_forward_tokens", "prefix_cache", "score_rows"]

_MODES = ("auto", "on", "cache", "off")
_mode: contextvars.ContextVar[str] = contextvars.ContextVar("lmxray_prefix_mode", default="auto")
_stats: contextvars.ContextVar[tuple[ForwardStats, ...]] = contextvars.ContextVar(
    "lmxray_prefix_stats", default=()
)
# per native model: True = reuse verified, False = reuse disabled (mismatch or unsupported)
_VERIFIED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

_PLAN_BLOCK = 4096  # rows packed together (bounds the planner's memory: block x longest row)
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
    ``"on"`` (packed rows whenever the model supports them; for tests), ``"cache"`` (the KV-cache
    stem path whenever rows share a prefix, then packing; for tests) or ``"off"`` (plain)."""
    if mode not in _MODES:
        raise InputError(f"prefix cache mode must be one of {', '.join(_MODES)}, got {mode!r}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


# ---------------------------------------------------------------------------------- planning
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


def _supported(model: Model) -> bool:
    hf = model.hf
    if _VERIFIED.get(hf) is False or not model._accepts_position_ids:
        return False
    cfg = hf.config
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "alibi", False):
        return False
    return getattr(cfg, "model_type", "") not in _UNSUPPORTED


# positions from the attention mask (ALiBi) or no attention at all: packing cannot express them
_UNSUPPORTED = {"bloom", "mpt", "falcon_mamba", "mamba", "mamba2", "rwkv"}


def _window(model: Model) -> int | None:
    """The sliding-attention window, when the model uses one (a packed row's custom mask does
    not apply it, so rows longer than the window are scored plainly)."""
    cfg = model.config
    w = getattr(cfg, "sliding_window", None)
    if not isinstance(w, int) or w <= 0 or getattr(cfg, "use_sliding_window", True) is False:
        return None
    return w


def _pack_width(model: Model) -> int:
    """Target width of a packed row: attention costs ~W / (6 d) of a token's linear layers, so
    wide models afford wider rows."""
    return int(min(1024, max(128, model.d_model // 2)))


def _overhead(model: Model) -> float:
    """A forward pass's fixed cost in token positions (used to compare plans)."""
    d, layers = model.d_model, model.n_layers
    flops = 2.0 * layers * 12 * d * d + 1.0
    if model.device.type == "cuda":
        per_call, rate = 2e-3 + 3e-4 * layers, 2e13
    else:
        per_call, rate = 4e-3 + 1.5e-3 * layers, 1e11
    return float(min(1e5, max(4.0, per_call * rate / flops)))


class _Fallback(Exception):
    pass


@dataclass
class _Packed:
    """One packed row: nodes of a token trie in depth-first order."""

    ids: np.ndarray  # [u] token of each node
    depth: np.ndarray  # [u] position id
    parent: np.ndarray  # [u] index of the parent node in this row, -1 for a root
    reads: list[tuple[int, list[int]]]  # (row, nodes predicting its targets)

    @property
    def used(self) -> int:
        return len(self.ids)

    def ancestors(self) -> np.ndarray:
        """``[u, u]``: node ``q`` attends to node ``k`` iff ``k`` is ``q`` or one of its ancestors."""
        u = self.used
        anc = np.zeros((u, u), dtype=bool)
        for q in range(u):
            par = self.parent[q]
            if par >= 0:
                anc[q] = anc[par]
            anc[q, q] = True
        return anc


def _trie_blocks(lens: np.ndarray, shared: np.ndarray, width: int) -> list[tuple[int, int]]:
    """Split lexicographically sorted rows into subtrees of at most ``width`` nodes.

    A block ``[lo, hi)`` costs its first row in full plus the new nodes of the others
    (``lens[j] - shared[j]``). An oversized block is split where the shared prefix is shortest
    (at the children of its root), so the paths repeated at block starts stay short.
    """
    new = lens - shared
    csum = np.concatenate([[0], np.cumsum(new)])

    def size(lo: int, hi: int) -> int:
        return int(lens[lo] + csum[hi] - csum[lo + 1])

    out: list[tuple[int, int]] = []
    stack = [(0, len(lens))]
    while stack:
        lo, hi = stack.pop()
        if hi - lo == 1 or size(lo, hi) <= width:
            out.append((lo, hi))
            continue
        inner = shared[lo + 1:hi]
        cut = lo + 1 + np.flatnonzero(inner == inner.min())
        bounds = [lo, *cut.tolist(), hi]
        stack.extend((a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    return sorted(out)


def _trie_packs(rows: Sequence[ScoreRow], idx: Sequence[int], width: int) -> list[_Packed]:
    """Pack the token trie of rows ``idx`` into rows of at most ``width`` nodes.

    In lexicographic order a row shares with earlier rows exactly its longest common prefix with
    the previous one, so walking the rows in that order adds each row's *new* nodes under the
    path of the previous row (a depth-first layout of the trie). The trie is cut into subtrees
    that fit (:func:`_trie_blocks`; a subtree repeats its root path) and the subtrees are
    bin-packed first-fit decreasing. Each row's targets are read at the nodes of its path that
    predict them, shared nodes included.
    """
    order = sorted(idx, key=lambda i: rows[i].input_ids)
    mat, lens = _id_matrix([rows[i].input_ids for i in order])
    shared = np.zeros(len(order), dtype=np.int64)
    if len(order) > 1:
        loc = np.arange(len(order))
        shared[1:] = _lcp(mat, lens, loc[:-1], loc[1:])
    blocks = _trie_blocks(lens, shared, width)
    sizes = {bl: int(lens[bl[0]] + (lens[bl[0] + 1:bl[1]] - shared[bl[0] + 1:bl[1]]).sum())
             for bl in blocks}
    bins: list[list[tuple[int, int]]] = []
    room: list[int] = []
    for bl in sorted(blocks, key=lambda b: -sizes[b]):
        for k, free in enumerate(room):
            if sizes[bl] <= free:
                bins[k].append(bl)
                room[k] -= sizes[bl]
                break
        else:
            bins.append([bl])
            room.append(width - sizes[bl])
    packs = []
    for bn in bins:
        ids: list[int] = []
        depth: list[int] = []
        parent: list[int] = []
        reads: list[tuple[int, list[int]]] = []
        for lo, hi in sorted(bn):
            path: list[int] = []  # node of each depth along the previous row
            for j in range(lo, hi):
                r = order[j]
                seq = rows[r].input_ids
                keep = int(shared[j]) if j > lo else 0
                del path[keep:]
                for d in range(keep, len(seq)):
                    parent.append(path[d - 1] if d else -1)
                    path.append(len(ids))
                    ids.append(seq[d])
                    depth.append(d)
                n_t = len(rows[r].targets)
                reads.append((r, path[len(seq) - n_t: len(seq)]))
        packs.append(_Packed(np.asarray(ids), np.asarray(depth), np.asarray(parent), reads))
    return packs


def _choose_width(model: Model, rows: Sequence[ScoreRow], idx: Sequence[int], longest: int) -> int:
    """The packed-row width with the fewest padded positions (attention over wider rows costs
    more: about ``width / (8 d)`` of a position's other work, measured on CPU)."""
    best, best_cost = longest, float("inf")
    for w in sorted({max(longest, w) for w in (128, 192, 256, 384, 512)}):
        if w > 4 * max(longest, _pack_width(model)):
            continue
        packs = _trie_packs(rows, idx, w)
        cost = len(packs) * max(pk.used for pk in packs) * (1 + w / (8.0 * model.d_model))
        if cost < best_cost:
            best, best_cost = w, cost
    return best


@contextlib.contextmanager
def _head_only_at(model: Model, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """Apply the output head only to hidden states ``[rows, cols]`` (as one ``[1, N, d]``
    sequence): ``logits_to_keep`` can only keep the same positions in every row of a batch, and
    packed rows need different ones. The hook is removed on exit, also when the forward raises."""

    def gather(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][rows, cols].unsqueeze(0), *args[1:])

    handle = model.hf.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def _hooked(module: torch.nn.Module) -> bool:
    """Whether a hook (an intervention, a cache) sees a module inside ``module``: its positions
    are a sequence's own, which packed rows and stem groups are not. Hooks on ``module`` itself
    (forward counters) see whole calls, and :func:`~lmxray.hooks.observer` hooks (cancel
    checks) see no positions: neither counts."""
    glob = torch.nn.modules.module
    hooks = [*glob._global_forward_hooks.values(), *glob._global_forward_pre_hooks.values()]
    for m in module.modules():
        if m is not module:
            hooks += [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
    return not all(is_observer(h) for h in hooks)


@contextlib.contextmanager
def _last_mlp_only_at(model: Model, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """Run the last block's MLP only at hidden states ``[rows, cols]`` (the positions whose
    logits are read): no later layer reads the other positions, so their MLP output (zeros here)
    changes nothing that is read. MLPs are position-wise (a mixture of experts routes each
    position alone; its router output, after the first, is passed on as it is). Used inside the
    verified reuse paths only: their first pass per model is compared with a plain forward."""
    mlp = site_map(model).mlps[-1]
    if mlp is None:
        yield
        return
    shape: list[torch.Size | None] = []

    def gather(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 3:  # e.g. OPT's flattened [B * L, d]
            shape.append(None)
            return None
        shape.append(x.shape)
        return (x[rows, cols].unsqueeze(0), *args[1:])

    def scatter(module: Any, args: tuple[Any, ...], out: Any) -> Any:
        size = shape.pop()
        if size is None:
            return None
        first = out[0] if isinstance(out, tuple) else out
        full = first.new_zeros((*size[:-1], first.shape[-1]))
        full[rows, cols] = first[0]
        return (full, *out[1:]) if isinstance(out, tuple) else full

    handles = [mlp.register_forward_pre_hook(gather), mlp.register_forward_hook(scatter)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _read_slices(row_ids: Sequence[int], where: Sequence[tuple[int, Sequence[int]]]) -> list[tuple[int, slice]]:
    """``(row, slice of the flat logits)`` for rows read at ``where`` (in that order)."""
    reads, n = [], 0
    for r, (_, pos) in zip(row_ids, where, strict=True):
        reads.append((r, slice(n, n + len(pos))))
        n += len(pos)
    return reads


def _forward_at(
    model: Model, where: Sequence[tuple[int, Sequence[int]]], kw: dict[str, Any]
) -> tuple[torch.Tensor, Any]:
    """Logits ``[N, V]`` (and the model's output) of one forward (``kw``) at the positions ``where`` = ``[(batch row,
    positions)]``, flattened in that order; the head runs at those positions only."""
    dev = model.device
    keep = sorted({p for _, pos in where for p in pos})
    col = {p: c for c, p in enumerate(keep)}
    if model._logits_kw is not None:
        kw["logits_to_keep"] = torch.as_tensor(keep, device=dev)
    bi = [j for j, pos in where for _ in pos]
    ci = [col[p] if model._logits_kw is not None else p for _, pos in where for p in pos]
    rows, cols = torch.as_tensor(bi, device=dev), torch.as_tensor(ci, device=dev)
    with _head_only_at(model, rows, cols), _last_mlp_only_at(model, rows, torch.as_tensor(
            [p for _, pos in where for p in pos], device=dev)):
        out = model.forward(**kw)
    return out.logits[0], out


class _Runner:
    def __init__(self, model: Model, rows: Sequence[ScoreRow], ctx: Context, out: list) -> None:
        self.model, self.rows, self.ctx, self.out = model, rows, ctx, out
        self.bar: Any = None

    def _tick(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _store(self, logits: torch.Tensor, reads: Sequence[tuple[int, slice]]) -> None:
        """Target values from ``logits [N, V]`` laid out as ``reads`` (row, slice of N)."""
        rows, fn = self.rows, self.ctx.target_fn
        tgt = torch.as_tensor([t for r, _ in reads for t in rows[r].targets], device=logits.device)
        values = fn(logits, tgt)
        foil_at = [k for r, sl in reads if rows[r].foils is not None for k in range(sl.start, sl.stop)]
        if foil_at:
            foils = [f for r, _ in reads for f in (rows[r].foils or [])]
            sel = torch.as_tensor(foil_at, device=logits.device)
            values[sel] = values[sel] - fn(logits[sel], torch.as_tensor(foils, device=logits.device))
        v = values.float().cpu().numpy()
        for r, sl in reads:
            self.out[r] = v[sl].astype(np.float32)
        self._tick(len(reads))

    def plain(self, idx: Sequence[int]) -> None:
        """Left-padded batches sorted by length, chunked by the memory budget (no reuse); a
        chunk that runs out of memory is halved and retried (recorded in ``ctx.info``)."""
        for chunk in _plain_chunks(self.model, self.rows, idx, self.ctx):
            run_chunks(chunk, len(chunk), self._plain_chunk, self.ctx.info)

    def packed_chunk(self, packs: Sequence[_Packed]) -> None:
        """:meth:`packed` over a memory-sized chunk, halved and retried on out-of-memory."""
        run_chunks(packs, len(packs), self._packed_list, self.ctx.info)

    def _packed_list(self, packs: Sequence[_Packed]) -> list[None]:
        try:
            self.packed(packs)
        except Exception as exc:
            if len(packs) > 1 or not is_oom(exc):
                raise  # several packs: run_chunks halves the chunk
            self._split_pack(packs[0])
        return [None] * len(packs)

    def _split_pack(self, pack: _Packed) -> None:
        """One packed row ran out of memory: its rows are re-packed at half its width (recorded
        in ``ctx.info["oom_repack"]`` as ``[positions before, width after]``), down to one row
        per pack, then scored plainly (where a row that alone does not fit raises)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        idx = [r for r, _ in pack.reads]
        width = pack.used // 2
        longest = max(len(self.rows[i].input_ids) for i in idx)
        if len(idx) == 1 or width < longest:
            self.ctx.info.setdefault("oom_repack", []).append([pack.used, longest])
            self.plain(idx)
            return
        self.ctx.info.setdefault("oom_repack", []).append([pack.used, width])
        packs = _trie_packs(self.rows, idx, width)
        run_chunks(packs, 1, self._packed_list, self.ctx.info)

    def _plain_chunk(self, chunk: Sequence[int]) -> list[None]:
        """One left-padded forward over rows ``chunk``."""
        rows, model = self.rows, self.model
        t_max = max(len(rows[i].targets) for i in chunk)
        seqs = [rows[i].input_ids for i in chunk]
        ids, mask, pos = model.pad_batch(seqs)
        logits = model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t_max
        ).logits
        _record(
            computed_tokens=sum(len(s) for s in seqs), padded_tokens=ids.numel(), forwards=1
        )
        flat, reads, n = [], [], 0
        for j, i in enumerate(chunk):
            n_t = len(rows[i].targets)
            flat.append(logits[j, t_max - n_t:])
            reads.append((i, slice(n, n + n_t)))
            n += n_t
        self._store(torch.cat(flat), reads)
        return [None] * len(chunk)

    def packed(self, packs: Sequence[_Packed]) -> None:
        """One forward over packed rows: tree attention through a 4D additive mask."""
        model, dev = self.model, self.model.device
        w = max(pk.used for pk in packs)
        b = len(packs)
        ids = np.full((b, w), model.pad_token_id, dtype=np.int64)
        pos = np.zeros((b, w), dtype=np.int64)
        allow = np.zeros((b, w, w), dtype=bool)
        for j, pk in enumerate(packs):
            u = pk.used
            ids[j, :u], pos[j, :u] = pk.ids, pk.depth
            allow[j, :u, :u] = pk.ancestors()
            allow[j, np.arange(u, w), np.arange(u, w)] = True  # padding sees itself only
        mask = torch.zeros((b, 1, w, w), dtype=model.dtype, device=dev)
        mask.masked_fill_(~torch.as_tensor(allow, device=dev)[:, None], torch.finfo(model.dtype).min)
        where = [(j, where) for j, pk in enumerate(packs) for _, where in pk.reads]
        reads = _read_slices([r for pk in packs for r, _ in pk.reads], where)
        flat, _ = _forward_at(model, where, dict(
            input_ids=torch.as_tensor(ids, device=dev), attention_mask=mask,
            position_ids=torch.as_tensor(pos, device=dev),
        ))
        used = sum(pk.used for pk in packs)
        naive = sum(len(self.rows[r].input_ids) for pk in packs for r, _ in pk.reads)
        _record(computed_tokens=used, padded_tokens=b * w, forwards=1, reused_tokens=naive - used)
        if self.model.hf not in _VERIFIED:
            self._verify(flat, reads, _VERIFIED, "packed prefix sharing")
        self._store(flat, reads)

    def stems(self, plan: StemPlan) -> None:
        """The anchor's pass (its targets and its cache), then its served rows in stem groups
        (each group halved and retried on out-of-memory)."""
        model, rows = self.model, self.rows
        a = rows[plan.anchor]
        n, n_t = len(a.input_ids), len(a.targets)
        where = [(0, list(range(n - n_t, n)))]
        flat, out = _forward_at(model, where, dict(
            input_ids=torch.as_tensor([a.input_ids], device=model.device), use_cache=True,
        ))
        _record(computed_tokens=n, padded_tokens=n, forwards=1)
        self._store(flat, _read_slices([plan.anchor], where))
        layers = cache_layers(getattr(out, "cache", None) or out.past_key_values)
        del out
        per_token = kv_bytes_per_token(layers)
        over = 0.0 if _mode.get() == "cache" else _overhead(model)
        for stem, group in stem_groups(model, rows, plan, self.ctx, per_token, over):
            run_chunks(group, len(group), functools.partial(self._stem_group, layers, stem),
                       self.ctx.info)

    def _stem_group(self, layers: list[tuple[torch.Tensor, torch.Tensor]], stem: int,
                    group: Sequence[int]) -> list[None]:
        """One forward of ``group``'s rows from position ``stem`` on, over the anchor's cache."""
        model, rows, dev = self.model, self.rows, self.model.device
        sfx = [rows[r].input_ids[stem:] for r in group]
        s = max(len(x) for x in sfx)
        ids = np.full((len(group), s), model.pad_token_id, dtype=np.int64)
        for j, x in enumerate(sfx):
            ids[j, : len(x)] = x
        pos = torch.arange(stem, stem + s, device=dev).expand(len(group), s)
        where = [(j, list(range(len(x) - len(rows[r].targets), len(x))))
                 for j, (r, x) in enumerate(zip(group, sfx, strict=True))]
        reads = _read_slices(list(group), where)
        flat = self._split_group(layers, stem, where, reads, ids, pos)
        if flat is None:
            flat, _ = _forward_at(model, where, dict(
                input_ids=torch.as_tensor(ids, device=dev), position_ids=pos,
                use_cache=True, **{cache_kwarg(model): expanded_cache(layers, stem, len(group))},
            ))
            if model.hf not in KV_VERIFIED:
                self._verify(flat, reads, KV_VERIFIED, "cached prefix sharing")
        _record(computed_tokens=sum(len(x) for x in sfx), padded_tokens=ids.size, forwards=1,
                reused_tokens=stem * len(group))
        self._store(flat, reads)
        return [None] * len(group)

    def _split_group(self, layers: list[tuple[torch.Tensor, torch.Tensor]], stem: int,
                     where: list[tuple[int, list[int]]], reads: list[tuple[int, slice]],
                     ids: np.ndarray, pos: torch.Tensor) -> torch.Tensor | None:
        """The group's logits through split prefix attention (:func:`split_prefix`), or
        ``None`` where it is not usable (then the cache path runs): checked against a plain
        forward once per model, switched off for a model it fails on."""
        model = self.model
        if not split_usable(model):
            return None
        try:
            with split_prefix(model, layers, stem, where):
                flat, _ = _forward_at(model, where, dict(
                    input_ids=torch.as_tensor(ids, device=model.device), position_ids=pos,
                    use_cache=False))
            if model.hf not in SPLIT_VERIFIED:
                self._verify(flat, reads, SPLIT_VERIFIED, "split prefix attention")
        except _Fallback:
            return None
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError, KeyError) as exc:
            if is_oom(exc) or isinstance(exc, LmxrayError):
                raise
            SPLIT_VERIFIED[model.hf] = False
            return None
        return flat

    def _verify(
        self, flat: torch.Tensor, reads: Sequence[tuple[int, slice]],
        registry: weakref.WeakKeyDictionary[Any, bool], what: str,
    ) -> None:
        """Compare one row (the longest) with a plain forward, once per model and path."""
        best = max(range(len(reads)), key=lambda k: (len(self.rows[reads[k][0]].input_ids), k))
        r, sl = reads[best]
        row = self.rows[r]
        ids, mask, pos = self.model.pad_batch([row.input_ids])
        n_t = len(row.targets)
        ref = self.model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=n_t
        ).logits[0]
        tol = 1e-4 if self.model.dtype == torch.float32 else 5e-2
        ok = bool(torch.allclose(flat[sl].float(), ref.float(), atol=tol, rtol=tol))
        registry[self.model.hf] = ok
        if not ok:
            warnings.warn(
                f"{what} does not reproduce plain scoring for {type(self.model.hf).__name__}; "
                "scoring without it (slower, same numbers)",
                RuntimeWarning,
                stacklevel=6,
            )
            raise _Fallback


def _plain_chunks(model: Model, rows: Sequence[ScoreRow], idx: Sequence[int], ctx: Context) -> list[list[int]]:
    """Length-sorted chunks of ``idx`` as the plain path runs them (memory-bounded)."""
    order = sorted(idx, key=lambda i: len(rows[i].input_ids))
    chunks, start = [], 0
    while start < len(order):
        longest = len(rows[order[min(len(order) - 1, start + MAX_ROWS - 1)]].input_ids)
        keep = max(1, max(len(rows[i].targets) for i in order[start:start + MAX_ROWS]))
        n = rows_per_chunk(model, longest, keep, with_grad=False, ctx=ctx)
        chunks.append(order[start:start + n])
        start += n
    return chunks


def _packed_chunks(model: Model, packs: list[_Packed], ctx: Context) -> list[list[_Packed]]:
    packs = sorted(packs, key=lambda pk: -pk.used)
    chunks, start = [], 0
    while start < len(packs):
        w = packs[start].used
        n = rows_per_chunk(model, w, w, with_grad=False, ctx=ctx)
        chunks.append(packs[start:start + n])
        start += n
    return chunks


def _cost(model: Model, widths: Sequence[Sequence[int]], packed: bool) -> float:
    """Estimated cost in token positions: per forward, overhead + rows x width (x attention
    overhead of the packed rows' wide masks)."""
    over = _overhead(model)
    total = 0.0
    for ws in widths:
        w = max(ws)
        att = 1.0 + (w / (8.0 * model.d_model) if packed else 0.0)
        total += over + len(ws) * w * att
    return total


def _dedupe(rows: Sequence[ScoreRow]) -> tuple[list[int], np.ndarray]:
    """Indices of the first of each distinct row, and each row's index into them."""
    keys: dict[tuple, int] = {}
    uniq: list[int] = []
    inverse = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        key = (tuple(r.input_ids), tuple(r.targets), None if r.foils is None else tuple(r.foils))
        u = keys.get(key)
        if u is None:
            u = keys[key] = len(uniq)
            uniq.append(i)
        inverse[i] = u
    return uniq, inverse


def score_rows(model: Model, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
    """Target-function values ``[len(row.targets)]`` for each row (see the module docstring)."""
    n = len(rows)
    out: list[np.ndarray | None] = [None] * n
    uniq, inverse = _dedupe(rows)
    _record(rows=n, unique_rows=len(uniq), naive_tokens=sum(len(r.input_ids) for r in rows))
    todo = [i for i in uniq if len(rows[i].targets)]
    for i in uniq:
        if not len(rows[i].targets):
            out[i] = np.zeros(0, dtype=np.float32)
    runner = _Runner(model, rows, ctx, out)
    mode = _mode.get()
    longest = max((len(rows[i].input_ids) for i in todo), default=0)
    window = _window(model)
    use = (
        mode != "off" and len(todo) > 1 and _supported(model) and not _hooked(model.hf)
        and (window is None or longest <= window)
    )
    bar_ctx: Any = contextlib.nullcontext()
    if len(todo) >= _PROGRESS_MIN_ROWS:
        from tqdm.auto import tqdm

        bar_ctx = tqdm(total=len(todo), desc="scoring", unit="seq", leave=False, disable=None)
    with bar_ctx as bar, model.fused_activations():
        runner.bar = bar if len(todo) >= _PROGRESS_MIN_ROWS else None
        if not use:
            runner.plain(todo)
        else:
            todo.sort(key=lambda i: rows[i].input_ids)
            for b in range(0, len(todo), _PLAN_BLOCK):
                block = todo[b:b + _PLAN_BLOCK]
                rest = _score_stems(runner, block, mode, longest)
                if rest:
                    _score_packed(runner, rest, mode, longest)
    res = [out[uniq[inverse[i]]] for i in range(n)]
    return [r if r is not None else np.zeros(0, np.float32) for r in res]


def _min_stem(model: Model, mode: str) -> int:
    """Shortest shared prefix worth a cached pass (forced stems in mode ``"cache"``)."""
    return 1 if mode == "cache" else max(32, _pack_width(model) // 4)


def _score_stems(runner: _Runner, block: list[int], mode: str, longest: int) -> list[int]:
    """Score the rows of ``block`` that the KV-cache stem path serves well; return the others.

    Used when its estimated cost beats plain batches of the same rows and, for rows short
    enough to pack (at most twice the packing width), packed rows of them too (a wide model's
    packed rows hold one 256-token row and little else); always in mode ``"cache"``."""
    model, rows = runner.model, runner.rows
    if mode == "on" or KV_VERIFIED.get(model.hf) is False:
        return block
    plans, rest = plan_stems(rows, block, _min_stem(model, mode))
    served = [i for pl in plans for i in (pl.anchor, *pl.served)]
    if not plans:
        return block
    chunks = _plain_chunks(model, rows, served, runner.ctx)
    other = len(chunks) * _overhead(model) + sum(
        plain_row_cost(len(rows[i].input_ids), model.d_model) for i in served
    )
    if longest <= 2 * _pack_width(model) and _VERIFIED.get(model.hf) is not False:
        # rows short enough for packed rows to hold their shared prefixes: the cheaper plan wins
        other = min(other, _packed_plan(model, rows, served, runner.ctx, longest)[1])
    if mode == "auto" and stem_cost(model, rows, plans, _overhead(model)) > 0.9 * other:
        return block
    for k, pl in enumerate(plans):
        try:
            runner.stems(pl)
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as exc:
            _disable(model, exc, KV_VERIFIED, "cached prefix sharing")
        except _Fallback:
            pass
        else:
            continue
        left = [i for p in plans[k:] for i in (p.anchor, *p.served)]
        for i in left:
            runner.out[i] = None
        return sorted(rest + left, key=lambda i: rows[i].input_ids)
    return rest


def _disable(model: Model, exc: BaseException, registry: weakref.WeakKeyDictionary[Any, bool],
             what: str) -> None:
    """A path failed before it was verified for this model: switch it off with a warning (an
    out-of-memory, an lmxray error or a failure after verification is re-raised)."""
    if is_oom(exc) or isinstance(exc, LmxrayError) or model.hf in registry:
        raise exc
    registry[model.hf] = False
    warnings.warn(
        f"{what} failed for {type(model.hf).__name__} "
        f"({type(exc).__name__}: {str(exc)[:120]}); scoring without it",
        RuntimeWarning, stacklevel=6,
    )


def _packed_plan(model: Model, rows: Sequence[ScoreRow], block: Sequence[int], ctx: Context,
                 longest: int) -> tuple[list[list[_Packed]], float]:
    """Memory-sized chunks of packed rows for ``block`` and their estimated cost."""
    width = _choose_width(model, rows, block, longest)
    chunks = _packed_chunks(model, _trie_packs(rows, block, width), ctx)
    return chunks, _cost(model, [[pk.used for pk in c] for c in chunks], packed=True)


def _score_packed(runner: _Runner, block: list[int], mode: str, longest: int) -> None:
    """Score ``block`` in packed rows (tree attention) or plain batches, whichever costs less."""
    model, rows, ctx, out = runner.model, runner.rows, runner.ctx, runner.out
    if len(block) < 2 or _VERIFIED.get(model.hf) is False:
        runner.plain(block)
        return
    chunks, packed_cost = _packed_plan(model, rows, block, ctx, longest)
    plain_chunks = _plain_chunks(model, rows, block, ctx)
    plain_cost = _cost(
        model, [[len(rows[i].input_ids) for i in c] for c in plain_chunks], packed=False
    )
    if mode in ("auto", "cache") and packed_cost > 0.9 * plain_cost:
        runner.plain(block)
        return
    try:
        for chunk in chunks:
            runner.packed_chunk(chunk)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        _disable(model, exc, _VERIFIED, "packed prefix sharing")
        for i in block:
            out[i] = None
        runner.plain(block)
    except _Fallback:
        for i in block:
            out[i] = None
        runner.plain(block)
