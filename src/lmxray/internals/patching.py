"""Activation patching and attribution patching on clean/corrupted prompt pairs.

**Activation patching** (Vig et al. 2020; Meng et al. 2022; Wang et al. 2023, "IOI"): run the
model on a *corrupted* prompt, write one activation from the *clean* run into it (one site, one
token position, optionally one head), and measure how much of the clean behaviour comes back.
With metric ``m`` (logit difference ``logit(answer) - logit(foil)`` or probability of the answer
at the last position), the normalised effect of a patch is

    (m_patched - m_corrupt) / (m_clean - m_corrupt)        (corrupt = 0, clean = 1)

Sites: ``resid_pre``, ``resid_post``, ``attn.out``, ``mlp.out`` over (layer × position), and
``attn.head_out`` over (layer × head × position) or (layer × head) with ``positions="all"``.
The sweep runs batched (many patches per forward) with KV-cache prefix reuse
(:mod:`lmxray.internals._sweep`).

**Attribution patching** (Nanda 2023; Syed et al. 2023, arXiv:2310.10348) approximates every
patch at once to first order: ``m_patched - m_corrupt ≈ ∇_a m(corrupt) · (a_clean - a_corrupt)``,
from 2 forward passes and 1 backward pass. It is reliable for small units (heads, single
positions) and degrades for whole residual streams (Kramár et al. 2024, arXiv:2403.00745);
:func:`compare` reports its Pearson correlation with exact patching per site kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..hooks import Fn, capture, prepare_inputs, run_with_cache
from ..io import from_jsonable
from ..memory import check_batch_size
from ..model import Model
from ..result import Result
from ..sites import site_map
from ._sweep import Job, Write, _apply_metric, base_metric, sweep

__all__ = [
    "PatchingResult",
    "activation_patching",
    "attribution_patching",
    "compare",
    "make_metric",
    "token_id",
    "PATCH_KINDS",
]

PATCH_KINDS = ("resid_pre", "resid_post", "attn.out", "mlp.out", "attn.head_out")
MetricFn = Callable[[torch.Tensor], torch.Tensor]


def token_id(model: Model, x: str | int) -> int:
    """The token id of ``x``: an int, or the first token of a continuation string."""
    if isinstance(x, int | np.integer):
        if not 0 <= int(x) < model.vocab_size:
            raise InputError(f"token id {x} is outside the vocabulary (size {model.vocab_size})")
        return int(x)
    if not isinstance(x, str) or not x:
        raise InputError(f"an answer must be a non-empty string or a token id, got {x!r}")
    ids = model.encode_target(x)
    if not ids:
        raise InputError(f"{x!r} has no tokens")
    return ids[0]


def make_metric(name: str | MetricFn, answer: int, foil: int | None = None) -> MetricFn:
    """``logits [N, vocab] -> [N]``: ``logit_diff`` (needs a foil), ``prob``, ``logprob`` or a callable."""
    if callable(name):
        user = name

        def checked(lg: torch.Tensor) -> torch.Tensor:
            out = user(lg)
            if not isinstance(out, torch.Tensor) or out.shape != lg.shape[:1]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InputError(f"a metric function must map logits [N, vocab] to [N]; got {got}")
            return out

        return checked
    if name == "logit_diff":
        if foil is None:
            raise InputError("metric logit_diff needs a foil token; pass foil= or use metric='prob'")
        return lambda lg: lg[:, answer] - lg[:, foil]
    if name == "prob":
        return lambda lg: torch.softmax(lg.float(), -1)[:, answer]
    if name == "logprob":
        return lambda lg: torch.log_softmax(lg.float(), -1)[:, answer]
    raise InputError(f"unknown metric {name!r}; use logit_diff, prob, logprob or a function")


@dataclass
class PatchingResult(Result):
    """Patching effects by site kind.

    Attributes:
        tokens / corrupt_tokens: the clean and corrupted prompt tokens (same length ``L``).
        effects: kind → normalised effect, ``[n_layers, P]`` (``[n_layers, n_heads, P]`` for
            ``attn.head_out``), ``P = L`` for ``positions="each"`` and 1 for ``"all"``.
        raw: kind → the metric after the patch (same shapes), un-normalised.
        metric: ``logit_diff`` / ``prob`` / ``logprob`` / ``custom``.
        clean_value / corrupt_value: the metric on the clean and corrupted runs.
        answer / foil: the token strings the metric reads.
        positions: ``"each"`` or ``"all"``.
        method: ``activation_patching`` or ``attribution_patching``.

    Views: ``show()`` (top effects per site kind), ``to_html()``, ``to_png(path, kind)``.
    """

    FORMAT: ClassVar[str] = "lmxray.patching/1"

    tokens: list[str]
    corrupt_tokens: list[str]
    effects: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    metric: str
    clean_value: float
    corrupt_value: float
    answer: str
    foil: str | None = None
    positions: str = "each"
    method: str = "activation_patching"
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return list(self.effects)

    def column_labels(self) -> list[str]:
        """Position labels (``"3 Paris"``; ``"all"`` when positions were patched together)."""
        if self.positions == "all":
            return ["all"]
        return [f"{i} {t}" for i, t in enumerate(self.tokens)]

    def matrix(self, kind: str) -> tuple[np.ndarray, list[str], list[str]]:
        """A 2-D view for plotting: ``(matrix, row_labels, col_labels)``; heads become rows
        ``L{layer}H{head}`` (or a ``[layers, heads]`` map when positions were ``all``)."""
        e = self.effects[kind]
        if e.ndim == 2:
            return e, [f"L{i}" for i in range(e.shape[0])], self.column_labels()
        n_l, n_h, n_p = e.shape
        if n_p == 1:
            return e[:, :, 0], [f"L{i}" for i in range(n_l)], [f"H{h}" for h in range(n_h)]
        return e.reshape(n_l * n_h, n_p), [f"L{i}H{h}" for i in range(n_l) for h in range(n_h)], self.column_labels()

    def top(self, kind: str, k: int = 5) -> list[tuple[tuple[int, ...], float]]:
        """The ``k`` largest effects of ``kind`` as ``(index, value)`` (index = layer, [head,] pos)."""
        e = self.effects[kind]
        flat = np.argsort(-np.nan_to_num(e, nan=-np.inf), axis=None)[:k]
        return [(tuple(int(i) for i in np.unravel_index(f, e.shape)), float(e.flat[f])) for f in flat]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT, "model": self.model_name, "method": self.method,
            "metric": self.metric, "tokens": self.tokens, "corrupt_tokens": self.corrupt_tokens,
            "answer": self.answer, "foil": self.foil, "positions": self.positions,
            "clean_value": self.clean_value, "corrupt_value": self.corrupt_value,
            "effects": {k: v for k, v in self.effects.items()},
            "raw": {k: v for k, v in self.raw.items()}, "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchingResult:
        return cls(
            tokens=list(d["tokens"]), corrupt_tokens=list(d["corrupt_tokens"]),
            effects={k: from_jsonable(v) for k, v in d["effects"].items()},
            raw={k: from_jsonable(v) for k, v in d["raw"].items()}, metric=d["metric"],
            clean_value=float(d["clean_value"]), corrupt_value=float(d["corrupt_value"]),
            answer=d["answer"], foil=d.get("foil"), positions=d.get("positions", "each"),
            method=d.get("method", "activation_patching"), model_name=d.get("model", ""),
            info=d.get("info", {}),
        )

    def to_png(self, path: str | os.PathLike[str] | None = None, kind: str | None = None, **kw: Any) -> bytes:
        """A PNG heat map of one site kind (default: the first)."""
        return super().to_png(path, kind=kind, **kw)


# --------------------------------------------------------------------------- helpers
def _pair(model: Model, clean: Any, corrupt: Any) -> tuple[list[int], list[int]]:
    _, _, _, c = prepare_inputs(model, [clean])
    _, _, _, k = prepare_inputs(model, [corrupt])
    if len(c[0]) != len(k[0]):
        raise InputError(
            f"clean and corrupted prompts must have the same number of tokens ({len(c[0])} vs "
            f"{len(k[0])}); change the corruption so that tokens line up"
        )
    return c[0], k[0]


def _kinds(model: Model, sites: str | Sequence[str]) -> list[str]:
    kinds = [sites] if isinstance(sites, str) else list(sites)
    if not kinds:
        raise InputError("no site kinds to patch; use e.g. sites=['resid_pre', 'attn.out', 'mlp.out']")
    sm = site_map(model)
    for k in kinds:
        if k not in PATCH_KINDS:
            raise InputError(f"cannot patch {k!r}; use one of {', '.join(PATCH_KINDS)}")
        sm.by_layer(k)  # raises when the model lacks it
    return kinds


def _positions_mode(positions: str) -> str:
    if positions not in ("each", "all"):
        raise InputError(f"positions must be 'each' or 'all', got {positions!r}")
    return positions


def _metric_fn(model: Model, clean_logits: torch.Tensor, corrupt_last: Any, answer: Any, foil: Any, metric: Any,
               k: int) -> tuple[int, int | None, MetricFn]:
    """Answer and foil ids (defaults: the clean and corrupted runs' top tokens) and the metric.

    ``corrupt_last``: the corrupted run's last-position logits ``[V]``, or a callable giving them
    (only needed when the foil defaults).
    """
    a_id = token_id(model, answer) if answer is not None else int(clean_logits[0, -1].argmax())
    f_id = token_id(model, foil) if foil is not None else None
    if f_id is None and metric == "logit_diff":
        last = corrupt_last() if callable(corrupt_last) else corrupt_last
        f_id = int(last.argmax())
        if f_id == a_id:
            raise InputError(
                "the corrupted prompt predicts the same token as the clean one; pass foil= "
                "(or answer=) or use metric='prob'"
            )
    if k != 1 and not callable(metric):
        raise InputError("metric_positions > 1 needs a metric function of logits [N, k, vocab]")
    return a_id, f_id, make_metric(metric, a_id, f_id)


def _setup(model: Model, clean: Any, corrupt: Any, answer: Any, foil: Any, metric: Any,
           kinds: list[str], k: int = 1) -> tuple[list[int], list[int], Any, int, int | None, MetricFn, float, float]:
    c_ids, k_ids = _pair(model, clean, corrupt)
    sm = site_map(model)
    names = [n for kind in kinds for n in sm.by_layer(kind)]
    src = run_with_cache(model, [c_ids], cache=names, logits=True)
    a_id, f_id, fn = _metric_fn(model, src.logits, lambda: model.logits(k_ids)[-1].float(), answer, foil,
                                metric, k)
    m_clean = float(_apply_metric(fn, src.logits, k)[0])
    m_corr = float(base_metric(model, k_ids, fn, metric_positions=k)[0][0])
    _gap(m_clean, m_corr)  # refused before the sweep, not after it
    return c_ids, k_ids, src, a_id, f_id, fn, m_clean, m_corr


def _gap(clean: float, corrupt: float) -> float:
    """``clean - corrupt``, refused when it is zero (there is nothing to normalise by)."""
    gap = clean - corrupt
    if abs(gap) < 1e-6:
        raise InputError(
            "the clean and corrupted prompts give the same metric value; there is no effect to "
            "localise (choose a corruption that changes the answer)"
        )
    return gap


def _normalise(raw: np.ndarray, clean: float, corrupt: float) -> np.ndarray:
    return ((raw - corrupt) / _gap(clean, corrupt)).astype(np.float32)


def _result(model: Model, c_ids: list[int], k_ids: list[int], raw: dict[str, np.ndarray], metric: Any,
            values: tuple[float, float], ids: tuple[int, int | None], mode: str, method: str,
            info: dict[str, Any]) -> PatchingResult:
    """The result of either patching method: effects normalised from ``raw``."""
    m_clean, m_corr = values
    a_id, f_id = ids
    return PatchingResult(
        tokens=model.token_strings(c_ids), corrupt_tokens=model.token_strings(k_ids),
        effects={k: _normalise(v, m_clean, m_corr) for k, v in raw.items()}, raw=raw,
        metric=metric if isinstance(metric, str) else "custom", clean_value=m_clean,
        corrupt_value=m_corr, answer=model.token_strings([a_id])[0],
        foil=model.token_strings([f_id])[0] if f_id is not None else None, positions=mode,
        method=method, model_name=model.name, info=info,
    )


# --------------------------------------------------------------------------- activation patching
def activation_patching(
    model: Model,
    clean: Any,
    corrupt: Any,
    answer: str | int | None = None,
    foil: str | int | None = None,
    *,
    sites: str | Sequence[str] = ("resid_pre",),
    positions: str = "each",
    metric: str | MetricFn = "logit_diff",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    prefix_reuse: bool = True,
    progress: bool = False,
    metric_positions: int = 1,
) -> PatchingResult:
    """Patch clean activations into the corrupted run, one (site, position[, head]) at a time.

    Args:
        model: the lmxray Model.
        clean / corrupt: prompts (text or token ids) with the same number of tokens.
        answer / foil: tokens the metric compares (default: the clean run's top token, and the
            corrupted run's top token as foil).
        sites: kinds among ``resid_pre``, ``resid_post``, ``attn.out``, ``mlp.out``,
            ``attn.head_out``.
        positions: ``"each"`` (one patch per token position) or ``"all"`` (every position at once).
        metric: ``logit_diff``, ``prob``, ``logprob`` or ``fn(logits[N, V]) -> [N]``.
        batch_size / memory_budget: rows per forward or the memory to size chunks from.
        prefix_reuse: reuse the corrupted run's KV cache before each patched position.
        progress: show a progress bar.
        metric_positions: a metric function reads the last ``k`` positions' logits
            ``[N, k, vocab]`` (e.g. the log-probability of a teacher-forced continuation).

    Returns:
        :class:`PatchingResult` with normalised effects (corrupt = 0, clean = 1).

    Example:
        >>> r = activation_patching(m, "When Mary and John went, John gave it to",
        ...                         "When Mary and John went, Mary gave it to",
        ...                         " Mary", " John")                      # doctest: +SKIP
        >>> r.effects["resid_pre"].shape                                   # doctest: +SKIP
        (4, 12)
    """
    check_batch_size(batch_size, "batch size")  # before any forward pass
    kinds = _kinds(model, sites)
    mode = _positions_mode(positions)
    c_ids, k_ids, src, a_id, f_id, fn, m_clean, m_corr = _setup(model, clean, corrupt, answer, foil, metric, kinds,
                                                                metric_positions)
    sm = site_map(model)
    L, n_l, n_h = len(c_ids), sm.n_layers, sm.n_heads
    pos_list: list[int | None] = list(range(L)) if mode == "each" else [None]
    jobs: list[Job] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for k in kinds:
        head_axis = [None] if k != "attn.head_out" else list(range(n_h))
        shapes[k] = (n_l, len(pos_list)) if k != "attn.head_out" else (n_l, n_h, len(pos_list))
        for layer in range(n_l):
            name = sm.name(k, layer)
            for h in head_axis:
                for p in pos_list:
                    jobs.append(Job((Write(name, p, h),)))
    sweep_info: dict[str, Any] = {}
    vals = sweep(model, k_ids, jobs, fn, source=src, batch_size=batch_size, memory_budget=memory_budget,
                 prefix_reuse=prefix_reuse, progress="activation patching" if progress else False,
                 metric_positions=metric_positions, info=sweep_info)
    raw: dict[str, np.ndarray] = {}
    start = 0
    for k in kinds:
        n = int(np.prod(shapes[k]))
        raw[k] = vals[start:start + n].reshape(shapes[k]).astype(np.float32)
        start += n
    return _result(model, c_ids, k_ids, raw, metric, (m_clean, m_corr), (a_id, f_id), mode,
                   "activation_patching", {"n_forward_rows": len(jobs), "prefix_reuse": prefix_reuse,
                                           "sites": kinds, **sweep_info})


# --------------------------------------------------------------------------- attribution patching
def attribution_patching(
    model: Model, clean: Any, corrupt: Any, answer: str | int | None = None,
    foil: str | int | None = None, *,
    sites: str | Sequence[str] = ("resid_pre", "attn.out", "mlp.out", "attn.head_out"),
    positions: str = "each",
    metric: str | MetricFn = "logit_diff",
    metric_positions: int = 1,
) -> PatchingResult:
    """First-order estimate of every patch from 2 forward passes and 1 backward pass.

    ``estimate(site, pos[, head]) = sum_d grad_m(corrupt)[pos, d] * (clean - corrupt)[pos, d]``,
    normalised like :func:`activation_patching`. Same arguments and result type (``raw`` holds
    ``m_corrupt + estimate``). Gradients are taken with ``torch.autograd.grad`` with respect to
    the activations only: no parameter's ``.grad`` is touched.
    """
    kinds = _kinds(model, sites)
    mode = _positions_mode(positions)
    k = metric_positions
    c_ids, k_ids = _pair(model, clean, corrupt)
    sm = site_map(model)
    names = [n for kind in kinds for n in sm.by_layer(kind)]
    src = run_with_cache(model, [c_ids], cache=names, logits=True)  # forward 1: clean
    ids = torch.tensor([k_ids], device=model.device)
    leaf = {"embed": Fn(fn=lambda x: x.detach().requires_grad_(True))}
    with torch.enable_grad(), capture(model, names, grad=True, interventions=leaf) as acts:
        # forward 2: corrupted, with the graph; then one backward for every site at once
        logits = model.forward(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=k).logits
        a_id, f_id, fn = _metric_fn(model, src.logits, logits[0, -1].detach().float(), answer, foil, metric, k)
        m = _apply_metric(fn, logits, k)[0]
        tensors = [acts[n] for n in names]
        grads = torch.autograd.grad(m, tensors, allow_unused=True)
    m_clean = float(_apply_metric(fn, src.logits, k)[0])
    m_corr = float(m.detach())
    est: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    for n, t, g in zip(names, tensors, grads, strict=True):
        kind = sm[n].kind
        diff = src[n][0].float() - t[0].detach().float()
        g = torch.zeros_like(diff) if g is None else g[0].float()
        e = (diff * g).sum(-1)  # [L] or [L, H]
        e = e.T if e.dim() == 2 else e  # heads first: [H, L]
        if mode == "all":
            e = e.sum(-1, keepdim=True)
        est[kind].append(e.cpu().numpy())
    raw = {k: (m_corr + np.stack(v)).astype(np.float32) for k, v in est.items()}
    return _result(model, c_ids, k_ids, raw, metric, (m_clean, m_corr), (a_id, f_id), mode,
                   "attribution_patching", {"passes": "2 forward + 1 backward", "sites": kinds})


def compare(exact: PatchingResult, approx: PatchingResult) -> dict[str, float]:
    """Pearson r between two results' effects, per site kind they share (NaN if constant)."""
    out = {}
    for k in exact.effects:
        if k not in approx.effects:
            continue
        a, b = exact.effects[k].ravel(), approx.effects[k].ravel()
        if a.shape != b.shape:
            raise InputError(f"{k}: shapes differ ({exact.effects[k].shape} vs {approx.effects[k].shape})")
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
            out[k] = float("nan")
        else:
            out[k] = float(np.corrcoef(a[ok], b[ok])[0, 1])
    return out
