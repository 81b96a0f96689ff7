"""The one hook layer: read activations at named sites, and intervene on them, always cleaned up.

Everything in lmxray that looks inside a model (lens, patching, causal tracing, head analysis,
probes, steering, editing) goes through this module. It puts PyTorch forward hooks on the
native Hugging Face modules named by :mod:`lmxray.sites` — the network itself is never
re-implemented — and removes every hook in ``finally``, even when the forward raises.

- :func:`run_with_cache` (``Model.run``) runs a forward and returns an :class:`ActivationCache`
  (site name → tensor, plus tokens, mask and logits; saved as safetensors, never pickled).
- :func:`intervene` (``Model.intervene``) is a context manager: inside it, every forward of the
  model (``forward``, ``generate``, attribution methods...) sees the interventions::

      with intervene(m, {"layers.3.attn.head_out": zero(heads=[1, 5]),
                         "layers.5.resid_post": add(steer_vec, positions=[-1]),
                         "embed": patch(clean_cache, positions=[2])}):
          out = m.forward(input_ids=ids)

  A value may be an :class:`Op` (``replace``, ``add``, ``scale``, ``zero``, ``mean_ablate``,
  ``patch``, ``scatter``), a tensor (replace), an :class:`ActivationCache` (patch everything),
  ``"zero"``/``"mean"``, or a callable ``fn(x[, site_name[, ctx]]) -> x | None``.

Positions (contract): a non-negative position is a *token index of the sequence* (BOS = 0); each
row's left padding and any KV-cache prefix are accounted for from the call's attention mask and
cache, so the same intervention means the same token in a padded batch and during cached
generation. A negative position counts from the end of the current call (``-1`` = last column).
Per-head sites (``attn.head_out``) are seen as ``[B, L, H, d_head]``; ``heads=`` selects heads.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, MethodError
from ..sites import Site, SiteMap, site_map
from ._cache import CACHE_FORMAT, ActivationCache, prepare_inputs

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = [
    "ActivationCache",
    "HookContext",
    "Op",
    "Replace",
    "Add",
    "Scale",
    "Zero",
    "Mean",
    "Patch",
    "Scatter",
    "Fn",
    "replace",
    "add",
    "scale",
    "zero",
    "mean_ablate",
    "patch",
    "scatter",
    "intervene",
    "run_with_cache",
    "check_additive",
    "capture",
    "prepare_inputs",
    "CACHE_FORMAT",
    "observer",
    "is_observer",
]

Positions = int | Sequence[int] | None


def observer(fn: Any) -> Any:
    """Mark a raw torch hook function as an observer: it neither reads nor changes activations
    by position (a forward counter, a cancel check). Perturbation scoring keeps its packed rows
    and stem groups, whose positions are not a sequence's own, under observers only; any other
    hook inside the model makes it score plainly."""
    fn.lmxray_observer = True
    return fn


def is_observer(fn: Any) -> bool:
    """Whether ``fn`` was marked by :func:`observer`."""
    return bool(getattr(fn, "lmxray_observer", False))


# --------------------------------------------------------------------------- call context
@dataclass
class HookContext:
    """What a hook knows about the current forward call.

    Attributes:
        pad: ``[B]`` leading padding columns of each row (from the call's attention mask).
        past: tokens already in the KV cache before this call.
        batch / length: the current call's batch size and number of new columns.
    """

    pad: torch.Tensor | None = None
    past: int = 0
    batch: int = 0
    length: int = 0

    def columns(self, positions: Positions, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Column indices ``[R, P]`` of ``positions`` for ``rows`` and their validity mask."""
        dev = rows.device
        if positions is None:
            cols = torch.arange(length, device=dev).expand(len(rows), length)
            return cols, torch.ones_like(cols, dtype=torch.bool)
        pos = torch.as_tensor(_as_list(positions), dtype=torch.long, device=dev)
        pad = self.pad_rows(rows, dev)
        cols = torch.where(pos[None, :] < 0, length + pos[None, :], pad[:, None] + pos[None, :] - self.past)
        valid = (cols >= 0) & (cols < length)
        return cols.clamp(0, max(length - 1, 0)), valid

    def pad_rows(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.pad is None:
            return torch.zeros(len(rows), dtype=torch.long, device=device)
        return self.pad.to(device)[rows]

    def token_mask(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """``[B, L]`` True at real (non-padding) tokens of the current call."""
        cols = torch.arange(length, device=device)[None, :] + self.past
        pad = self.pad.to(device) if self.pad is not None else torch.zeros(batch, dtype=torch.long, device=device)
        return cols >= pad[:batch, None]


def _as_list(x: int | Sequence[int]) -> list[int]:
    if isinstance(x, int | np.integer):
        return [int(x)]
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.reshape(-1).tolist()]
    try:
        out = [int(v) for v in x]
    except (TypeError, ValueError):
        raise InputError(f"positions/heads/rows must be ints or lists of ints, got {x!r}") from None
    if not out:
        raise InputError("an empty list of positions/heads/rows selects nothing; pass None for all")
    return out


def _context_from_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HookContext:
    ids = kwargs.get("input_ids", args[0] if args else None)
    emb = kwargs.get("inputs_embeds")
    x = ids if isinstance(ids, torch.Tensor) else emb
    batch, length = (int(x.shape[0]), int(x.shape[1])) if isinstance(x, torch.Tensor) and x.dim() >= 2 else (0, 0)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = 0
    if cache is not None:
        try:
            past = int(cache.get_seq_length())
        except (AttributeError, TypeError):
            past = int(cache[0][0].shape[-2]) if isinstance(cache, tuple | list) and cache else 0
    mask = kwargs.get("attention_mask")
    pad = None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        m = mask != 0
        # leading zeros per row (left padding); a row of zeros counts as all padding
        pad = torch.where(m.any(-1), m.int().argmax(-1), torch.full_like(m[:, 0], m.shape[1], dtype=torch.long))
        pad = pad.long()
    return HookContext(pad=pad, past=past, batch=batch, length=length)


# --------------------------------------------------------------------------- operations
@dataclass
class Op:
    """An intervention on the selected part of a site's tensor.

    Attributes:
        positions: token positions (see module docstring); None = every column of the call.
        heads: heads to touch (per-head sites only); None = all.
        rows: batch rows to touch; None = all.
    """

    positions: Positions = None
    heads: int | Sequence[int] | None = None
    rows: int | Sequence[int] | None = None

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def apply(self, x: torch.Tensor, site: Site, ctx: HookContext) -> torch.Tensor:
        sel = _Selection.make(x, site, ctx, self.positions, self.heads, self.rows)
        region = sel.gather(x)
        return sel.scatter(x, self.new_values(region, sel))


@dataclass
class Replace(Op):
    """Replace the selection by ``value`` (broadcast to ``[rows, positions, (heads,) ...]``)."""

    value: Any = None

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        return _like(self.value, region).expand_as(region)


@dataclass
class Add(Op):
    """Add ``coef * value`` to the selection (steering vectors)."""

    value: Any = None
    coef: float = 1.0

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        return region + self.coef * _like(self.value, region)


@dataclass
class Scale(Op):
    """Multiply the selection by ``factor``."""

    factor: float = 0.0

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        return region * self.factor


@dataclass
class Zero(Op):
    """Zero-ablate the selection."""

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        return torch.zeros_like(region)


@dataclass
class Mean(Op):
    """Mean-ablate: replace by ``value`` (e.g. ``cache.mean(site)`` over a reference set), or by
    the mean over every real token of the current batch when ``value`` is None."""

    value: Any = None

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        if self.value is not None:
            mean = _like(self.value, region)
            if sel.head_idx is not None and mean.dim() >= 2 and mean.shape[-2] == sel.n_heads:
                mean = mean[..., sel.head_idx, :]
            return mean.expand_as(region)
        mask = sel.ctx.token_mask(sel.x.shape[0], sel.x.shape[1], sel.x.device)
        mean = sel.x[mask].mean(0) if bool(mask.any()) else sel.x.reshape(-1, *sel.x.shape[2:]).mean(0)
        if sel.head_idx is not None:
            mean = mean[sel.head_idx]
        return mean.to(region.dtype).expand_as(region)


@dataclass
class Patch(Op):
    """Replace the selection by the same site's activations from ``source`` at the same tokens.

    ``source`` is an :class:`ActivationCache` (its own padding is accounted for) or a tensor of
    the site's shape ``[B_src, L_src, ...]``. A source with one row patches every row.
    """

    source: Any = None

    def new_values(self, region: torch.Tensor, sel: _Selection) -> torch.Tensor:
        src, src_pad = _source_tensor(self.source, sel.site)
        src = src.to(region.device, region.dtype)
        b_src = src.shape[0]
        if b_src == 1:
            src_rows = torch.zeros_like(sel.row_idx)
        elif b_src == sel.x.shape[0]:
            src_rows = sel.row_idx
        else:
            raise InputError(
                f"patch source for {sel.site.name} has {b_src} rows but the batch has "
                f"{sel.x.shape[0]}; use a one-row source or one row per batch row"
            )
        # the token index of each selected column, then its column in the source
        tok = sel.cols + sel.ctx.past - sel.ctx.pad_rows(sel.row_idx, sel.cols.device)[:, None]
        spad = src_pad.to(tok.device)[src_rows] if src_pad is not None else torch.zeros_like(src_rows)
        scol = spad[:, None] + tok
        ok = (tok >= 0) & (scol >= 0) & (scol < src.shape[1])
        if bool((sel.valid & ~ok).any()):
            raise InputError(
                f"patch source for {sel.site.name} has {src.shape[1]} columns and does not cover the "
                "patched tokens; patch from a run on inputs of the same length"
            )
        vals = src[src_rows[:, None], scol.clamp(0, src.shape[1] - 1)]
        if sel.head_idx is not None:
            vals = vals[:, :, sel.head_idx]
        return vals


@dataclass
class Scatter(Op):
    """Point-wise writes: ``x[rows[k], positions[k] (, heads[k])] = values[k]`` (or ``+=``).

    The workhorse of batched sweeps: row ``k`` of a batch gets its own position and value.
    ``rows``/``positions``/``heads`` are 1-D of equal length ``N``; ``values`` is ``[N, ...]``.
    """

    values: Any = None
    mode: str = "replace"

    def apply(self, x: torch.Tensor, site: Site, ctx: HookContext) -> torch.Tensor:
        if self.rows is None or self.positions is None:
            raise InputError("scatter needs rows and positions (1-D, one per value)")
        dev = x.device
        rows = torch.as_tensor(_as_list(self.rows), dtype=torch.long, device=dev)
        pos = torch.as_tensor(_as_list(self.positions), dtype=torch.long, device=dev)
        vals = torch.as_tensor(self.values).to(dev, x.dtype) if not isinstance(self.values, torch.Tensor) else self.values.to(dev, x.dtype)
        if len(rows) != len(pos) or vals.shape[0] != len(rows):
            raise InputError("scatter needs rows, positions and values of the same length")
        L = x.shape[1]
        pad = ctx.pad_rows(rows, dev)
        cols = torch.where(pos < 0, L + pos, pad + pos - ctx.past)
        ok = (cols >= 0) & (cols < L) & (rows < x.shape[0])
        if not bool(ok.any()):
            return x
        rows, cols, vals = rows[ok], cols[ok], vals[ok]
        index: tuple[torch.Tensor, ...] = (rows, cols)
        if self.heads is not None:
            if site.heads is None:
                raise InputError(f"heads= applies to per-head sites; {site.name} has no head axis")
            heads = torch.as_tensor(_as_list(self.heads), dtype=torch.long, device=dev)[ok]
            index = (rows, cols, heads)
        x = x.clone()
        if self.mode == "add":
            x[index] = x[index] + vals
        elif self.mode == "replace":
            x[index] = vals
        else:
            raise InputError(f"scatter mode must be 'replace' or 'add', got {self.mode!r}")
        return x


@dataclass
class Fn(Op):
    """A callable ``fn(x[, site_name[, ctx]]) -> new x | None`` on the whole tensor."""

    fn: Callable[..., Any] | None = None

    def apply(self, x: torch.Tensor, site: Site, ctx: HookContext) -> torch.Tensor:
        assert self.fn is not None
        n = _arity(self.fn)
        out = self.fn(x) if n <= 1 else self.fn(x, site.name) if n == 2 else self.fn(x, site.name, ctx)
        if out is None:
            return x
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"intervention on {site.name} returned {got}; return a tensor of shape "
                f"{tuple(x.shape)} or None"
            )
        return out


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 3
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def replace(value: Any, positions: Positions = None, heads: Any = None, rows: Any = None) -> Replace:
    """Replace the selection by ``value``. See :class:`Replace`."""
    return Replace(positions, heads, rows, value=value)


def add(value: Any, positions: Positions = None, heads: Any = None, rows: Any = None, coef: float = 1.0) -> Add:
    """Add ``coef * value``. See :class:`Add`."""
    return Add(positions, heads, rows, value=value, coef=coef)


def scale(factor: float, positions: Positions = None, heads: Any = None, rows: Any = None) -> Scale:
    """Multiply by ``factor``. See :class:`Scale`."""
    return Scale(positions, heads, rows, factor=factor)


def zero(positions: Positions = None, heads: Any = None, rows: Any = None) -> Zero:
    """Zero-ablate. See :class:`Zero`."""
    return Zero(positions, heads, rows)


def mean_ablate(value: Any = None, positions: Positions = None, heads: Any = None, rows: Any = None) -> Mean:
    """Mean-ablate (reference mean ``value``, or the batch mean). See :class:`Mean`."""
    return Mean(positions, heads, rows, value=value)


def patch(source: Any, positions: Positions = None, heads: Any = None, rows: Any = None) -> Patch:
    """Patch from another run's cache. See :class:`Patch`."""
    return Patch(positions, heads, rows, source=source)


def scatter(rows: Any, positions: Any, values: Any, heads: Any = None, mode: str = "replace") -> Scatter:
    """Point-wise writes, one (row, position[, head]) per value. See :class:`Scatter`."""
    return Scatter(positions, heads, rows, values=values, mode=mode)


def _like(value: Any, ref: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(ref.device, ref.dtype)
    try:
        return torch.as_tensor(np.asarray(value), device=ref.device, dtype=ref.dtype)
    except (TypeError, ValueError):
        raise InputError(f"cannot use {type(value).__name__} as an activation value") from None


def _source_tensor(source: Any, site: Site) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(source, ActivationCache):
        if site.name not in source.activations:
            raise InputError(f"the patch source cache holds no {site.name}; cache it in that run")
        return source.activations[site.name], source.pad
    if isinstance(source, torch.Tensor):
        return source, None
    raise InputError(f"patch source must be an ActivationCache or a tensor, got {type(source).__name__}")


@dataclass
class _Selection:
    x: torch.Tensor
    site: Site
    ctx: HookContext
    row_idx: torch.Tensor
    cols: torch.Tensor
    valid: torch.Tensor
    head_idx: torch.Tensor | None
    n_heads: int | None

    @classmethod
    def make(cls, x: torch.Tensor, site: Site, ctx: HookContext, positions: Positions, heads: Any,
             rows: Any) -> _Selection:
        dev = x.device
        b, length = x.shape[0], x.shape[1]
        row_idx = torch.arange(b, device=dev) if rows is None else torch.as_tensor(_as_list(rows), dtype=torch.long, device=dev)
        if len(row_idx) and (int(row_idx.max()) >= b or int(row_idx.min()) < -b):
            raise InputError(f"rows {_as_list(rows)} are out of range for a batch of {b}")
        row_idx = row_idx % max(b, 1)
        cols, valid = ctx.columns(positions, row_idx, length)
        head_idx = None
        if heads is not None:
            if site.heads is None:
                raise InputError(f"heads= applies to per-head sites (attn.head_out); {site.name} has no head axis")
            head_idx = torch.as_tensor(_as_list(heads), dtype=torch.long, device=dev)
            if int(head_idx.max()) >= site.heads or int(head_idx.min()) < -site.heads:
                raise InputError(f"heads {_as_list(heads)} are out of range; the model has {site.heads} heads")
            head_idx = head_idx % site.heads
        return cls(x, site, ctx, row_idx, cols, valid, head_idx, site.heads)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        region = x[self.row_idx[:, None], self.cols]
        if self.head_idx is not None:
            region = region[:, :, self.head_idx]
        return region

    def scatter(self, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if new.shape != self.gather(x).shape:
            new = new.expand(self.gather(x).shape)
        r = self.row_idx[:, None].expand_as(self.cols)[self.valid]
        c = self.cols[self.valid]
        vals = new[self.valid]
        x = x.clone()
        if self.head_idx is None:
            x[r, c] = vals.to(x.dtype)
        else:
            x[r[:, None], c[:, None], self.head_idx[None, :]] = vals.to(x.dtype)
        return x


# --------------------------------------------------------------------------- spec parsing
def _to_ops(value: Any) -> list[Op]:
    if isinstance(value, Op):
        return [value]
    if isinstance(value, ActivationCache):
        return [Patch(source=value)]
    if isinstance(value, str):
        if value == "zero":
            return [Zero()]
        if value == "mean":
            return [Mean()]
        raise InputError(f"unknown intervention {value!r}; use 'zero', 'mean', an Op, a tensor or a function")
    if isinstance(value, torch.Tensor | np.ndarray | float | int):
        return [Replace(value=value)]
    if isinstance(value, list | tuple) and value and all(isinstance(v, Op) or callable(v) for v in value):
        return [op for v in value for op in _to_ops(v)]
    if callable(value):
        return [Fn(fn=value)]
    raise InputError(
        f"cannot intervene with {type(value).__name__}; use an Op (replace/add/zero/mean_ablate/"
        "patch), a tensor, 'zero', 'mean' or a function"
    )


def _parse_spec(sm: SiteMap, spec: Mapping[str, Any] | None) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    if spec is None:
        return out
    if not isinstance(spec, Mapping):
        raise InputError("interventions must be a dict {site: op}; e.g. {'layers.0.resid_post': zero()}")
    for pattern, value in spec.items():
        ops = _to_ops(value)
        for name in sm.expand(pattern):
            site = sm[name]
            if not site.writable:
                raise InputError(
                    f"{name} is read-only; intervene on layers.{site.layer}.attn.head_out instead"
                )
            out.setdefault(name, []).extend(ops)
    return out


# --------------------------------------------------------------------------- hook sessions
class _Session:
    """Registers hooks for a set of sites; removes them all in ``close`` (idempotent)."""

    def __init__(self, model: Any, ops: dict[str, list[Op]], record: Sequence[str] = (),
                 *, grad: bool = False, to_cpu: bool = False) -> None:
        self.sm = site_map(model)
        self.hf = getattr(model, "hf", model)
        self.ops = ops
        self.record = set(record)
        self.grad = grad
        self.to_cpu = to_cpu
        self.store: dict[str, torch.Tensor] = {}
        self.ctx = HookContext()
        self.handles: list[Any] = []

    def open(self) -> _Session:
        try:
            self.handles.append(self.hf.register_forward_pre_hook(self._top, with_kwargs=True))
            groups: dict[tuple[int, str], list[Site]] = {}
            modules: dict[int, torch.nn.Module] = {}
            for name in sorted(set(self.ops) | self.record, key=self._order):
                site = self.sm[name]
                groups.setdefault((id(site.module), site.mode), []).append(site)
                modules[id(site.module)] = site.module
            for (mid, mode), sites in groups.items():
                mod = modules[mid]
                if mode == "input":
                    self.handles.append(mod.register_forward_pre_hook(self._pre(sites), with_kwargs=True))
                else:
                    self.handles.append(mod.register_forward_hook(self._post(sites)))
        except BaseException:
            self.close()
            raise
        return self

    def _order(self, name: str) -> int:
        return self.sm.order(name)

    def close(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def _top(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.ctx = _context_from_call(args, kwargs)

    def _process(self, site: Site, t: torch.Tensor) -> torch.Tensor:
        x = t
        b, length = self.ctx.batch, self.ctx.length
        if t.dim() == 2 and b and t.shape[0] == b * length and site.kind != "attn.pattern":
            x = t.view(b, length, t.shape[-1])  # e.g. OPT runs its MLP on [B*L, d]
        if site.attach is not None:
            x = self._process_attached(site, x)
        else:
            if site.heads is not None:
                x = x.view(*x.shape[:-1], site.heads, x.shape[-1] // site.heads)
            x = self._apply(site, x)
        if x.shape != t.shape:
            x = x.reshape(t.shape)
        return x

    def _apply(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops.get(site.name, ()):
            x = op.apply(x, site, self.ctx)
        if site.name in self.record:
            if self.grad:
                self.store[site.name] = x
            else:
                v = x.detach()
                self.store[site.name] = v.to("cpu", copy=True) if self.to_cpu else v.clone()
        return x

    def _process_attached(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        """An attached dictionary: ops act on its latents ``f = encode(x)``; an edit adds
        ``decode(f') - decode(f)`` to ``x`` (the reconstruction error is kept)."""
        f = site.attach.encode(x)
        new = self._apply(site, f)
        if new is f:
            return x
        return x + (site.attach.decode(new) - site.attach.decode(f)).to(x.dtype)

    def _pre(self, sites: list[Site]) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                t, where = args[0], "args"
            else:
                key = next((k for k in ("hidden_states", "x", "input") if k in kwargs), None)
                if key is None:
                    raise MethodError(f"cannot find the input tensor of {type(module).__name__}")
                t, where = kwargs[key], key
            new = t
            for site in sites:
                new = self._process(site, new)
            if new is t:
                return None
            if where == "args":
                return (new, *args[1:]), kwargs
            return args, {**kwargs, where: new}
        return hook

    def _post(self, sites: list[Site]) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
            out = output
            for site in sites:
                if site.index is None or isinstance(out, torch.Tensor):
                    if site.index not in (None, 0):
                        raise MethodError(f"{site.name}: {type(module).__name__} returned one tensor")
                    out = self._process(site, out)
                    continue
                seq = list(out) if isinstance(out, tuple | list) else None
                if seq is None or len(seq) <= site.index:
                    raise MethodError(f"{site.name}: unexpected output of {type(module).__name__}")
                t = seq[site.index]
                if t is None:
                    raise MethodError(
                        f"{site.name} is empty: the model did not compute attention weights "
                        "(the pattern needs eager attention)"
                    )
                new = self._process(site, t)
                if new is not t:
                    seq[site.index] = new
                    out = type(out)(seq) if isinstance(out, tuple) and type(out) is tuple else tuple(seq)
            return None if out is output else out
        return hook


@contextlib.contextmanager
def intervene(model: Any, spec: Mapping[str, Any]) -> Iterator[None]:
    """Apply interventions to every forward of ``model`` inside the ``with`` block.

    Args:
        model: an lmxray :class:`~lmxray.model.Model` (or a native HF causal LM).
        spec: ``{site_or_pattern: op}``; see the module docstring for values and positions.

    Example:
        >>> with intervene(m, {"layers.1.attn.head_out": zero(heads=0)}):  # doctest: +SKIP
        ...     logits = m.logits("The capital of France is")
    """
    sm = site_map(model)
    ops = _parse_spec(sm, spec)
    session = _Session(model, ops)
    session.open()
    try:
        yield
    finally:
        session.close()


@contextlib.contextmanager
def capture(model: Any, sites: Sequence[str], *, grad: bool = False,
            interventions: Mapping[str, Any] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activations at ``sites`` of the forwards inside the block (low level).

    Yields a dict filled during the forward: site name → tensor (the last call's). With
    ``grad=True`` the tensors keep their autograd graph (for attribution patching).
    """
    sm = site_map(model)
    names = sm.expand(list(sites))
    session = _Session(model, _parse_spec(sm, interventions), names, grad=grad)
    session.open()
    try:
        yield session.store
    finally:
        session.close()


def run_with_cache(
    model: Model,
    inputs: Any,
    cache: str | Sequence[str] | None = None,
    *,
    interventions: Mapping[str, Any] | None = None,
    grad: bool = False,
    logits: bool = True,
    device: str | torch.device | None = None,
) -> ActivationCache:
    """Run a forward pass and return the activations at the requested sites (``Model.run``).

    Args:
        model: the lmxray Model.
        inputs: a prompt, a list of prompts (left-padded into one batch) or token ids.
        cache: site names / kinds / globs (see :meth:`lmxray.sites.SiteMap.expand`); None =
            every site except ``attn.pattern`` (patterns need eager attention: ask for them).
        interventions: applied during this forward (``{site: op}``, as in :func:`intervene`);
            the cache records the values *after* the interventions.
        grad: keep the autograd graph (activations are not detached).
        logits: keep ``[B, L, vocab]`` logits in ``cache.logits``.
        device: move cached tensors there (e.g. ``"cpu"`` to free accelerator memory).

    Returns:
        An :class:`ActivationCache`.

    Example:
        >>> c = run_with_cache(m, "The capital of France is", cache=["resid_post"])  # doctest: +SKIP
        >>> c["layers.-1.resid_post"].shape                                         # doctest: +SKIP
        torch.Size([1, 7, 64])
    """
    sm = site_map(model)
    if cache is None:
        names = [n for n in sm.names() if sm[n].kind not in ("attn.pattern", "logits")]
    else:
        names = sm.expand(cache)
    ids, mask, pos, seqs = prepare_inputs(model, inputs)
    needs_eager = any(sm[n].kind == "attn.pattern" for n in names)
    session = _Session(model, _parse_spec(sm, interventions), names, grad=grad,
                       to_cpu=device is not None and torch.device(device).type == "cpu")
    eager = model.eager_attention() if needs_eager else contextlib.nullcontext()
    grad_ctx = torch.enable_grad() if grad else torch.no_grad()
    with eager, grad_ctx:
        session.open()
        try:
            out = model.forward(input_ids=ids, attention_mask=mask, position_ids=pos)
        finally:
            session.close()
    acts = session.store
    if device is not None:
        acts = {k: v.to(device) for k, v in acts.items()}
    lg = out.logits if grad else out.logits.detach()
    if device is not None:
        lg = lg.to(device)
    return ActivationCache(
        acts, input_ids=ids, attention_mask=mask,
        tokens=[model.token_strings(s) for s in seqs], logits=lg if logits else None,
        n_layers=sm.n_layers, model_name=model.name,
    )


def check_additive(model: Any, atol: float = 1e-4) -> dict[int, float]:
    """Per layer, ``max |resid_post - (resid_pre + attn.out + mlp.out)|`` on a short input.

    A small value confirms that ``attn.out`` and ``mlp.out`` are exactly what the block adds to the
    residual stream (true for pre-norm sequential and parallel blocks; not for post-norm ones).
    """
    sm = site_map(model)
    ids = [[1 + (7 * k) % 50 for k in range(6)]]
    cache = run_with_cache(model, ids, cache=["resid_pre", "attn.out", "mlp.out", "resid_post"])
    out = {}
    for i in range(sm.n_layers):
        p = f"layers.{i}."
        est = cache[p + "resid_pre"] + cache[p + "attn.out"] + cache[p + "mlp.out"]
        out[i] = float((cache[p + "resid_post"] - est).abs().max())
    return out
