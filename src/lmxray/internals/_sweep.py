"""The batched intervention engine behind activation patching, causal tracing and head ablation.

A *sweep* evaluates many interventions ("jobs") on the same base input. Each job writes a few
``(site, position[, head])`` values (taken from a source run, usually the clean one) into the
base run, and a metric is read from the last position's logits. Instead of one forward per job
(TransformerLens ``patching.py``), the engine

- stacks many jobs in the batch dimension (row ``r * J + j`` = base row ``r`` of job ``j``) and
  applies every job's writes with one point-wise :class:`~lmxray.hooks.Scatter` per site;
- reuses the base run's KV cache for the tokens before a job's first patched position: a
  patch at token ``p`` cannot change anything at positions ``< p`` (the model is causal), so
  jobs are grouped by ``p`` and only tokens ``p..L-1`` are recomputed;
- computes logits at the last position only;
- sizes chunks from the one memory budget (:func:`lmxray.memory.rows_that_fit`), halves a chunk
  that runs out of memory and retries (:func:`lmxray.memory.run_chunks`; each back-off is
  recorded in the caller's ``info["oom_backoff"]``), and shows a progress bar.

``R`` base rows serve causal tracing: each is the same prompt with its own noise sample
(``base_edits``), and a job's metric is averaged over them.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..hooks import ActivationCache, Scatter, intervene
from ..memory import rows_that_fit, run_chunks
from ..model import Model
from ..sites import site_map

__all__ = ["Write", "Job", "BaseEdit", "sweep", "rows_budget", "base_metric"]

_MAX_ROWS = 512


@dataclass(frozen=True)
class Write:
    """One value a job writes: at ``site`` and token ``position`` (None = every position),
    for one ``head`` of a per-head site (None = the whole vector)."""

    site: str
    position: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class Job:
    """A set of writes evaluated together (one cell of a patching heat map)."""

    writes: tuple[Write, ...]

    @property
    def first_position(self) -> int:
        pos = [w.position for w in self.writes]
        return 0 if any(p is None for p in pos) else min(p for p in pos if p is not None)


@dataclass
class BaseEdit:
    """An edit every row of base row ``r`` gets: ``values[r]`` written at ``positions``.

    ``values``: ``[R, len(positions), ...]``; ``mode``: ``"add"`` (noise) or ``"replace"``.
    """

    site: str
    positions: Sequence[int]
    values: torch.Tensor
    mode: str = "add"


def rows_budget(model: Model, length: int, *, past: int = 0, memory_budget: int | None = None,
                batch_size: int | None = None) -> int:
    """How many rows of ``length`` new tokens (after ``past`` cached ones) fit in one forward.

    Per row: two layers of live activations ``L * (34 d + 5 h (L + past))`` half-words
    (Korthikanti et al. 2022, no grad), the repeated KV cache ``2 n_layers (L + past) d``, and
    one row of logits.
    """
    elt = torch.finfo(model.dtype).bits // 8
    d, h, n = model.d_model, model.n_heads, model.n_layers
    total = length + past
    act = 2 * length * (34 * d + 5 * h * total) * elt / 2
    kv = 2 * n * total * d * elt
    per_row = act + kv + model.vocab_size * 4 * 2 + 1
    return rows_that_fit(per_row, device=model.devices, memory_budget=memory_budget, batch_size=batch_size,
                         max_rows=_MAX_ROWS)


def _cache_kw(model: Model) -> str:
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


def _values_for(write: Write, source: ActivationCache, sm: Any) -> tuple[list[int], list[int | None], torch.Tensor]:
    """Positions, heads and values ``[P, ...]`` of one write, read from row 0 of ``source``."""
    t = source[write.site]
    pad = int(source.pad[0])
    n_tok = t.shape[1] - pad
    positions = list(range(n_tok)) if write.position is None else [write.position]
    for p in positions:
        if not 0 <= p < n_tok:
            raise InputError(f"position {p} is outside the source's {n_tok} tokens")
    vals = t[0, [pad + p for p in positions]]
    if write.head is not None:
        vals = vals[:, write.head]
    return positions, [write.head] * len(positions), vals


def _edit_ops(
    chunk: Sequence[Job], n_base: int, source: ActivationCache | None, base_edits: Sequence[BaseEdit],
    sm: Any, value_cache: dict[Write, Any],
) -> dict[str, list[Scatter]]:
    """One Scatter per site for the jobs of a chunk (rows laid out ``r * J + j``)."""
    J = len(chunk)
    per_site: dict[str, dict[str, list[Any]]] = {}

    def put(site: str, key: str, rows: list[int], pos: list[int], heads: list[int | None], vals: torch.Tensor) -> None:
        d = per_site.setdefault(f"{site}|{key}", {"rows": [], "pos": [], "heads": [], "vals": []})
        d["rows"] += rows
        d["pos"] += pos
        d["heads"] += heads
        d["vals"].append(vals)

    for e in base_edits:
        for r in range(n_base):
            rows = [r * J + j for j in range(J) for _ in e.positions]
            pos = [p for _ in range(J) for p in e.positions]
            vals = e.values[r].repeat(J, *([1] * (e.values.dim() - 2)))
            put(e.site, "base-" + e.mode, rows, pos, [None] * len(pos), vals)
    for j, job in enumerate(chunk):
        for w in job.writes:
            if source is None:
                raise InputError("jobs with writes need a source cache")
            if w not in value_cache:
                value_cache[w] = _values_for(w, source, sm)
            positions, heads, vals = value_cache[w]
            for r in range(n_base):
                put(w.site, "head" if w.head is not None else "vec", [r * J + j] * len(positions),
                    positions, heads, vals)
    ops: dict[str, list[Scatter]] = {}
    # base edits first (noise), then the jobs' writes (restorations replace noisy values)
    for key in sorted(per_site, key=lambda k: 0 if "|base-" in k else 1):
        site, kind = key.split("|")
        d = per_site[key]
        mode = "add" if kind == "base-add" else "replace"
        heads = d["heads"] if kind == "head" else None
        ops.setdefault(site, []).append(
            Scatter(positions=d["pos"], heads=heads, rows=d["rows"], values=torch.cat(d["vals"]), mode=mode)
        )
    return ops


def _apply_metric(metric: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, k: int) -> torch.Tensor:
    """``metric`` on the last position ``[N, V]`` (k = 1) or the last k positions ``[N, k, V]``."""
    return metric(logits[:, -1].float()) if k == 1 else metric(logits[:, -k:].float())


def base_metric(
    model: Model, ids: Sequence[int], metric: Callable[[torch.Tensor], torch.Tensor], *,
    n_base: int = 1, base_edits: Sequence[BaseEdit] = (), keep_cache: bool = False, metric_positions: int = 1,
) -> tuple[np.ndarray, Any, torch.Tensor]:
    """The metric on the base rows (no job writes) ``[R]``, their KV cache if asked, and their
    last ``metric_positions`` logits ``[R, k, V]``."""
    sm = site_map(model)
    ops = _edit_ops([Job(())], n_base, None, base_edits, sm, {})
    x = torch.tensor([list(ids)] * n_base, device=model.device)
    kw: dict[str, Any] = {"use_cache": True} if keep_cache else {}
    with torch.no_grad(), intervene(model, ops):
        out = model.forward(input_ids=x, attention_mask=torch.ones_like(x), logits_to_keep=metric_positions, **kw)
    vals = _apply_metric(metric, out.logits, metric_positions).float().cpu().numpy()
    return vals, (_out_cache(out) if keep_cache else None), out.logits


def _groups(jobs: Sequence[Job], L: int, prefix_reuse: bool) -> dict[int, list[int]]:
    """Job indices by the first position they write (0 for all without prefix reuse)."""
    groups: dict[int, list[int]] = {}
    for k, job in enumerate(jobs):
        p = job.first_position if prefix_reuse else 0
        if p >= L:
            raise InputError(f"a job writes at position {p} but the input has {L} tokens")
        groups.setdefault(p, []).append(k)
    return groups


def _base_cache(model: Model, ids: list[int], metric: Callable[[torch.Tensor], torch.Tensor], n_base: int,
                base_edits: Sequence[BaseEdit], K: int) -> tuple[Any, Any]:
    """The base rows' KV cache and last-K logits, or ``(None, None)`` when this model's cache
    cannot be cut (then whole sequences are recomputed)."""
    try:
        _, cache, logits = base_metric(model, ids, metric, n_base=n_base, base_edits=base_edits,
                                       keep_cache=True, metric_positions=K)
        probe = copy.deepcopy(cache)
        probe.crop(-1)
        probe.batch_repeat_interleave(1)
    except (AttributeError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return None, None
    return cache, logits


@dataclass
class _Run:
    """What every chunk of a sweep shares."""

    model: Model
    ids: list[int]
    jobs: Sequence[Job]
    metric: Callable[[torch.Tensor], torch.Tensor]
    source: ActivationCache | None
    n_base: int
    base_edits: Sequence[BaseEdit]
    K: int
    base_cache: Any
    base_logits: Any
    value_cache: dict[Write, Any]

    def chunk(self, p: int, idx: Sequence[int]) -> list[float]:
        """The metric of jobs ``idx`` (all writing first at ``p``), averaged over base rows."""
        model, L, dev = self.model, len(self.ids), self.model.device
        chunk = [self.jobs[k] for k in idx]
        J = len(chunk)
        ops = _edit_ops(chunk, self.n_base, self.source, self.base_edits, site_map(model), self.value_cache)
        rows = J * self.n_base
        n_new = L - p
        x = torch.tensor([self.ids[p:]] * rows, device=dev)
        mask = torch.ones((rows, L), dtype=torch.long, device=dev)
        kw: dict[str, Any] = {}
        if p > 0:
            c = copy.deepcopy(self.base_cache)
            c.crop(-(L - p))
            c.batch_repeat_interleave(J)
            kw[_cache_kw(model)] = c
            kw["use_cache"] = True
        pos = torch.arange(p, L, device=dev).expand(rows, n_new)
        keep = min(self.K, n_new)
        with torch.no_grad(), intervene(model, ops):
            logits = model.forward(input_ids=x, attention_mask=mask, position_ids=pos,
                                   logits_to_keep=keep, **kw).logits
        if keep < self.K:  # metric positions before p: unchanged from the base run
            if self.base_logits is None:  # pragma: no cover - p > 0 implies a base cache
                raise RuntimeError("no base logits for positions before the patch")
            logits = torch.cat([self.base_logits[:, :self.K - keep].repeat_interleave(J, 0), logits], 1)
        vals = _apply_metric(self.metric, logits, self.K).float().cpu().numpy().reshape(self.n_base, J)
        return [float(v) for v in vals.mean(0)]


def sweep(
    model: Model,
    ids: Sequence[int],
    jobs: Sequence[Job],
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    source: ActivationCache | None = None,
    n_base: int = 1,
    base_edits: Sequence[BaseEdit] = (),
    prefix_reuse: bool = True,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | str = False,
    metric_positions: int = 1,
    info: MutableMapping[str, Any] | None = None,
) -> np.ndarray:
    """The metric after each job, averaged over the ``n_base`` base rows: ``[len(jobs)]``.

    Args:
        model: the lmxray Model.
        ids: the base token ids (one unpadded sequence, e.g. the corrupted prompt).
        jobs: what to write; values come from row 0 of ``source`` at the same token positions.
        metric: ``logits [N, vocab] -> [N]`` at the last position, or ``[N, k, vocab] -> [N]``
            over the last ``k = metric_positions`` positions.
        source: activations to write (e.g. the clean run's cache).
        n_base: base rows per job (noise samples); ``base_edits`` give each its edits.
        prefix_reuse: reuse the base KV cache before each job's first written position.
        batch_size / memory_budget: rows per forward, or the bytes to size chunks from.
        progress: show a progress bar (a string gives its description).
        info: where out-of-memory back-offs are recorded (``info["oom_backoff"]``).

    Returns:
        float64 ``[len(jobs)]``.
    """
    ids = [int(t) for t in ids]
    L = len(ids)
    if not jobs:
        return np.zeros(0)
    groups = _groups(jobs, L, prefix_reuse)
    K = int(metric_positions)
    if not 1 <= K <= L:
        raise InputError(f"metric_positions must be in 1..{L}")
    base_cache = base_logits = None
    if prefix_reuse and any(p > 0 for p in groups):
        base_cache, base_logits = _base_cache(model, ids, metric, n_base, base_edits, K)
    if base_cache is None and any(p > 0 for p in groups):
        groups = {0: sorted(k for ks in groups.values() for k in ks)}
    run = _Run(model, ids, jobs, metric, source, n_base, base_edits, K, base_cache, base_logits, {})
    out = np.zeros(len(jobs), dtype=np.float64)
    bar = tqdm(total=len(jobs) * n_base, desc=progress if isinstance(progress, str) else "patching",
               disable=None if progress else True, leave=False, unit="row")

    def one_chunk(p: int) -> Callable[[Sequence[int]], list[float]]:
        def fn(idx: Sequence[int]) -> list[float]:
            vals = run.chunk(p, idx)
            bar.update(len(idx) * n_base)
            return vals
        return fn

    try:
        for p, members in sorted(groups.items()):
            per_chunk = max(1, rows_budget(model, L - p, past=p, memory_budget=memory_budget,
                                           batch_size=batch_size) // n_base)
            out[members] = run_chunks(members, per_chunk, one_chunk(p), info)
    finally:
        bar.close()
    return out
