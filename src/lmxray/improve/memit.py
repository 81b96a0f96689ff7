"""MEMIT: many factual edits at once, spread over several MLP layers (Meng et al. 2023,
"Mass-Editing Memory in a Transformer", arXiv 2210.07229).

For ``N`` requests (prompt, subject, new object) and edit layers ``R = l_1 < ... < l_m``:

1. **targets**: for each request a vector ``δ_i`` (``[d_model]``) added to the residual stream
   after the last edit layer ``L = l_m``, at the subject's last token, is optimised (Adam, all
   requests in one batched forward: each ``δ_i`` only touches its own rows) so that the new
   object is likely after the prompt and after each context prefix, with a KL term on
   "{subject} is a"; ``‖δ_i‖ ≤ clamp · ‖h_i‖``. The target is ``z_i = h_i + δ_i``.
2. **spread**: for each layer ``l`` in ascending order, with the updates of the earlier layers
   applied, read the keys ``K`` (``[N, d_mlp]``, subject's last token, mean over the prompt
   and its prefixes) and the current ``h_i`` at ``L``; the residual left to write is
   ``R = (z - h) / (layers left)``; the update is the least-squares solution with the key
   covariance ``C`` (:func:`lmxray.improve.editing.key_covariance`) as the memory of what
   must not move, and the keys of subjects not edited (second moment ``P``,
   :func:`preserved_keys`) held in place as well::

       ΔW_l = Rᵀ K (λ C + μ P + Kᵀ K)⁻¹

   (``λ``: ``mom2_weight``, the weight of the covariance against the new keys; ``μ``:
   ``preserve_weight``, 0 for plain MEMIT).

3. **correction** (``correct_rounds``): with the solved update applied, the requests whose new
   object is not the top-1 continuation of their own prompt get an extra ``δ'_i`` optimised on
   the edited model; their targets become ``z_i + δ'_i`` and step 2 is solved again from the
   unedited weights (one batch update of all requests).

:func:`memit_edit` returns a :class:`MultiEdit` (per-layer ``ΔW``; ``applied`` / ``apply`` as
:class:`~lmxray.improve.editing.RankOneEdit`). :func:`evaluate_memit` applies ``n_edits``
counterfactual edits at once and reports CounterFact-style metrics against the unedited model
(see :mod:`lmxray.improve.edit_metrics`).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..hooks import intervene, run_with_cache, scatter
from ..internals.tracing import subject_positions
from ..model import Model
from ..sites import site_map
from ..zoo import corpus
from .edit_metrics import consistency, fluency
from .editing import (
    context_prefixes,
    counterfactuals,
    edited_copy,
    fact_group,
    key_covariances,
    plan_edits,
    prompt_variants,
    top1,
    weights_added,
)
from .results import EditReport, ImproveResult
from .steering import lm_loss

__all__ = ["EditRequest", "MultiEdit", "memit_edit", "default_layers", "evaluate_memit",
           "BatchEditResult", "batch_result", "least_squares_update", "preserved_keys",
           "COV_TEXTS", "MOM2_WEIGHT", "PRESERVE_WEIGHT", "CORRECT_ROUNDS"]


MOM2_WEIGHT = 30.0
"""``λ``: the weight of the key covariance against the new keys (chosen at seeds 0 and 1)."""

PRESERVE_WEIGHT = 10.0
"""``μ``: the weight of the preserved subjects' keys (chosen at seeds 0 and 1)."""

CORRECT_ROUNDS = 1
"""Rounds of target correction (:func:`memit_edit`): the requests the solved update leaves
unmet get their targets re-optimised on the edited model, then all are solved again (chosen at
seeds 0 and 1)."""

COV_TEXTS = 4000
"""Zoo texts the key covariances are read from by default (about 1.3·10⁵ tokens: MEMIT reads
10⁵ Wikipedia samples)."""


@dataclass(frozen=True)
class EditRequest:
    """One rewrite: ``prompt`` (containing ``subject``) should continue with ``target``."""

    prompt: str
    subject: str
    target: str

    @classmethod
    def of(cls, r: Any) -> EditRequest:
        """From an EditRequest, a ``(prompt, subject, target)`` tuple or a dict."""
        if isinstance(r, EditRequest):
            return r
        if isinstance(r, dict):
            r = (r.get("prompt"), r.get("subject"), r.get("target"))
        if not isinstance(r, Sequence) or len(r) != 3 or not all(isinstance(x, str) for x in r):
            raise InputError("an edit request is (prompt, subject, target) strings")
        prompt, subject, target = r
        if not prompt.strip() or not subject or not target.strip():
            raise InputError("an edit request needs a prompt, a subject and a new target")
        if subject not in prompt:
            raise InputError(f"the subject {subject!r} does not occur in {prompt!r}")
        return cls(prompt, subject, target if target.startswith(" ") else " " + target)


@dataclass
class MultiEdit:
    """Per-layer updates ``ΔW_l`` (``[d_model, d_mlp]``) of the MLP down projections, and the
    targets ``z`` (``[n, d_model]``, float64) they were solved for."""

    deltas: dict[int, torch.Tensor]
    requests: list[EditRequest] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    targets: torch.Tensor | None = None

    def applied(self, model: Model) -> contextlib.AbstractContextManager[Model]:
        """The edits applied in place inside the block; weights restored bit-exactly after."""
        return weights_added(model, self.deltas)

    def apply(self, model: Model) -> Model:
        """An edited deep copy of ``model``."""
        return edited_copy(model, self.deltas, "memit")


def default_layers(n_layers: int, located: int, span: int | None = None) -> list[int]:
    """The located layer and the ``span - 1`` after it (default span: ``max(1,
    round(n_layers / 6))``, MEMIT's 5 of GPT-J's 28 scaled down; 1 on a 4-layer model, where the
    fact is read off the subject's token by the next layer's attention, so targets after layer
    0 are out of reach), kept before the model's last block."""
    span = span if span is not None else max(1, round(n_layers / 6))
    # the last block is left out where possible: its output site is the final residual, where
    # the hooked target does not reach the loss on every family (a zero gradient)
    return [ly for ly in range(located, located + span) if ly < max(1, n_layers - 1)] or [located]


@dataclass
class _Batch:
    """Rows of all requests' variants (teacher-forced on the target) and essence prompts."""

    seqs: list[list[int]]
    owner: list[int]  # request index of each row
    pos: list[int]  # subject's last token in each row
    n_t: list[int]  # target tokens scored in each row (0 for essence rows)
    tgt: list[list[int]]


def _rows(model: Model, reqs: Sequence[EditRequest], prefixes: Sequence[str]) -> _Batch:
    b = _Batch([], [], [], [], [])
    for i, r in enumerate(reqs):
        t_ids = model.encode_target(r.target)
        if not t_ids:
            raise InputError(f"the new target {r.target!r} tokenizes to no tokens")
        for ids, pos in prompt_variants(model, r.prompt, r.subject, t_ids, prefixes):
            b.seqs.append(ids + t_ids[:-1])
            b.owner.append(i)
            b.pos.append(pos)
            b.n_t.append(len(t_ids))
            b.tgt.append(t_ids)
        ess = f"{r.subject} is a"
        b.seqs.append(model.encode(ess))
        b.owner.append(i)
        b.pos.append(max(subject_positions(model, ess, r.subject)))
        b.n_t.append(0)
        b.tgt.append([])
    return b


def _at_subject(x: torch.Tensor, mask: torch.Tensor, b: _Batch) -> torch.Tensor:
    """``[rows, d]`` activations at each row's subject position (rows left padded)."""
    lens = mask.sum(-1).tolist()
    cols = [x.shape[1] - n + p for n, p in zip(lens, b.pos, strict=True)]
    return x[torch.arange(x.shape[0]), torch.tensor(cols)]


def _per_request(rows: torch.Tensor, b: _Batch, n: int, essence: bool = False) -> torch.Tensor:
    """``[n, d]`` mean over each request's variant rows (or its essence row)."""
    keep = [j for j, k in enumerate(b.n_t) if (k == 0) == essence]
    owner = torch.tensor([b.owner[j] for j in keep])
    out = torch.zeros(n, rows.shape[-1], dtype=rows.dtype)
    out.index_add_(0, owner, rows[keep].to(out.dtype))
    return out / torch.bincount(owner, minlength=n).clamp(min=1).unsqueeze(-1).to(out.dtype)


def _read(model: Model, b: _Batch, site: str, n: int, key_rows: str = "mean") -> torch.Tensor:
    """float64 ``site`` at the subject's last token: ``[n, d]`` mean over each request's
    variants (``"mean"``), ``[n, d]`` on the bare prompt (``"prompt"``) or ``[variant rows, d]``
    (``"each"``, see :func:`_key_owner`); essence rows left out."""
    cache = run_with_cache(model, b.seqs, cache=[site], logits=False)
    rows = _at_subject(cache[site].double().cpu(), cache.attention_mask.cpu(), b)
    if key_rows == "mean":
        return _per_request(rows, b, n)
    return rows[_key_rows(b, key_rows)]


def _key_rows(b: _Batch, key_rows: str) -> list[int]:
    """Batch rows that are least-squares rows: every variant, or each request's bare prompt
    (its first variant)."""
    var = [j for j, k in enumerate(b.n_t) if k > 0]
    if key_rows == "each":
        return var
    return [j for j in var if j == 0 or b.owner[j - 1] != b.owner[j]]


def _key_owner(b: _Batch, key_rows: str, n: int) -> torch.Tensor:
    """The request of each least-squares row."""
    if key_rows == "mean":
        return torch.arange(n)
    return torch.tensor([b.owner[j] for j in _key_rows(b, key_rows)])


@dataclass
class _Targets:
    """The batched δ optimisation at ``site`` (resid_post of the last edit layer)."""

    model: Model
    b: _Batch
    site: str
    n: int
    kl_factor: float
    weight_decay: float = 0.0

    def logp(self, delta: torch.Tensor | None) -> torch.Tensor:
        m, b = self.model, self.b
        x, mask, pos = m.pad_batch(b.seqs)
        keep = max(max(b.n_t), 1)
        spec = {} if delta is None else {self.site: scatter(
            list(range(len(b.seqs))), b.pos, delta[torch.tensor(b.owner)], mode="add")}
        with intervene(m, spec):
            logits = m.forward(input_ids=x, attention_mask=mask, position_ids=pos,
                               logits_to_keep=keep).logits.float()
        return torch.log_softmax(logits, -1)

    def loss(self, delta: torch.Tensor, base: torch.Tensor, scale: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, [n] P(target) per request (geometric mean over its variants))``; the loss
        adds ``weight_decay · (‖δ_i‖ / ‖h_i‖)²`` per request (MEMIT's ``v_weight_decay``)."""
        lp, b = self.logp(delta), self.b
        keep = lp.shape[1]
        idx = torch.zeros(len(b.seqs), keep, dtype=torch.long)
        on = torch.zeros(len(b.seqs), keep)
        for j, t in enumerate(b.tgt):
            if t:
                idx[j, keep - len(t):] = torch.tensor(t)
                on[j, keep - len(t):] = 1.0
        row_nll = -(lp.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * on).sum(-1)  # [rows]
        ess = torch.tensor([k == 0 for k in b.n_t])
        row_kl = (base[:, -1].exp() * (base[:, -1] - lp[:, -1])).sum(-1) * ess
        owner = torch.tensor(b.owner)
        nll = torch.zeros(self.n).index_add(0, owner, row_nll * ~ess)
        cnt = torch.zeros(self.n).index_add(0, owner, (~ess).float()).clamp(min=1)
        kl = torch.zeros(self.n).index_add(0, owner, row_kl)
        nll = nll / cnt
        decay = self.weight_decay * (delta.norm(dim=-1) / scale) ** 2
        return (nll + self.kl_factor * kl + decay).sum(), torch.exp(-nll.detach())


def _optimise_targets(tg: _Targets, h: torch.Tensor, steps: int, lr: float, clamp: float,
                      stop_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(δ [n, d_model], P(target) per request)``."""
    m = tg.model
    with torch.no_grad():
        base = tg.logp(None)
    scale = h.float().norm(dim=-1).clamp(min=1e-6)
    delta = torch.zeros(tg.n, m.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr * float(scale.mean()) / np.sqrt(m.d_model))
    p = torch.zeros(tg.n)
    for _ in range(steps):
        with torch.enable_grad():
            loss, p = tg.loss(delta, base, scale)
            if bool((p >= stop_prob).all()):
                break
            (g,) = torch.autograd.grad(loss, [delta])
        delta.grad = g
        opt.step()
        with torch.no_grad():
            norm = delta.norm(dim=-1).clamp(min=1e-12)
            delta.mul_(torch.clamp(clamp * scale / norm, max=1.0).unsqueeze(-1))
    return delta.detach(), p


def memit_edit(
    model: Model,
    requests: Sequence[Any],
    *,
    layers: Sequence[int],
    covs: dict[int, torch.Tensor] | None = None,
    cov_texts: Sequence[str] | None = None,
    prefixes: Sequence[str] = (),
    preserve: dict[int, torch.Tensor] | None = None,
    preserve_subjects: Sequence[str] = (),
    preserve_weight: float = PRESERVE_WEIGHT,
    mom2_weight: float = MOM2_WEIGHT,
    steps: int = 60,
    lr: float = 0.5,
    kl_factor: float = 0.0625,
    weight_decay: float = 0.5,
    clamp: float = 1.0,
    stop_prob: float = 0.95,
    chunk: int = 25,
    key_rows: str = "prompt",
    correct_rounds: int = CORRECT_ROUNDS,
) -> MultiEdit:
    """Compute (not apply) MEMIT edits of all ``requests`` spread over ``layers``.

    Args:
        requests: :class:`EditRequest` s, ``(prompt, subject, target)`` tuples or dicts.
        layers: the edit layers (ascending; the last one carries the targets).
        covs / cov_texts: key covariance per layer, or texts to compute them from.
        prefixes: context prefixes (:func:`lmxray.improve.editing.context_prefixes`).
        preserve / preserve_subjects: the preserved keys' second moment per layer
            (:func:`preserved_keys`), or subjects to read them for from ``cov_texts`` (the
            requests' own subjects left out); neither: no preservation rows (plain MEMIT).
        preserve_weight: ``μ``, their weight (``0``: plain MEMIT).
        mom2_weight: ``λ``, the weight of the covariance against the new keys.
        steps / lr / kl_factor / stop_prob: the target optimisation (as ``rome_edit``).
        clamp: ``‖δ_i‖ ≤ clamp · ‖h_i‖`` (the residual at the target layer, not the MLP
            output as in ``rome_edit``). weight_decay: ``+ weight_decay · (‖δ_i‖ / ‖h_i‖)²``.
        chunk: requests optimised together in one batch.
        key_rows: ``"mean"`` (MEMIT: one key per request, the mean over the prompt and its
            prefixes), ``"prompt"`` (the bare prompt's key; the prefixes only shape ``δ``) or
            ``"each"`` (one least-squares row per variant, each written towards its own
            ``h + δ``).
        correct_rounds: rounds of target correction: with the solved update applied, each
            request whose new target is not the top-1 continuation of its own prompt gets an
            extra ``δ'_i`` optimised on the edited model (same optimisation and clamp), its
            target becomes ``z_i + δ'_i`` (what the write lost, asked for again), and the update
            of all requests is solved again from the unedited weights: still one batch update.
            ``0``: plain MEMIT targets.
    """
    if key_rows not in ("mean", "prompt", "each"):
        raise InputError(f"key_rows must be 'mean', 'prompt' or 'each', got {key_rows!r}")
    reqs = [EditRequest.of(r) for r in requests]
    if not reqs:
        raise InputError("MEMIT needs at least one edit request")
    n_l = site_map(model).n_layers
    layers = sorted({int(ly) for ly in layers})
    if not layers or not all(0 <= ly < n_l for ly in layers):
        raise InputError(f"MEMIT layers {layers} must be in 0..{n_l - 1}")
    if not mom2_weight > 0:
        raise InputError(f"mom2_weight must be positive, got {mom2_weight}")
    for name, v, low in (("weight_decay", weight_decay, 0.0), ("kl_factor", kl_factor, 0.0),
                         ("preserve_weight", preserve_weight, 0.0)):
        if not v >= low:
            raise InputError(f"{name} must be >= {low}, got {v}")
    if not clamp > 0:
        raise InputError(f"clamp must be positive, got {clamp}")
    if steps < 1 or chunk < 1:
        raise InputError(f"steps and chunk must be at least 1, got {steps} and {chunk}")
    if isinstance(correct_rounds, bool) or not isinstance(correct_rounds, int) or correct_rounds < 0:
        raise InputError(f"correct_rounds must be an integer >= 0, got {correct_rounds!r}")
    covs = dict(covs or {})
    missing = [ly for ly in layers if ly not in covs]
    if missing:
        if not cov_texts:
            raise InputError("MEMIT needs key covariances (covs=) or sample texts (cov_texts=)")
        covs.update(key_covariances(model, missing, cov_texts))
    pres = (_preservation(model, reqs, layers, preserve, preserve_subjects, cov_texts)
            if preserve_weight > 0 else {})
    z_site = f"layers.{layers[-1]}.resid_post"
    b = _rows(model, reqs, prefixes)
    h0 = _read(model, b, z_site, len(reqs))
    opt = {"steps": steps, "lr": lr, "kl_factor": kl_factor, "weight_decay": weight_decay,
           "clamp": clamp, "stop_prob": stop_prob}
    delta, p = _chunked_targets(model, reqs, prefixes, z_site, h0, chunk, opt)
    owner = _key_owner(b, key_rows, len(reqs))
    z = _read(model, b, z_site, len(reqs), key_rows) + delta.double()[owner]
    deltas = _spread(model, b, layers, covs, z, mom2_weight, len(reqs), key_rows,
                     pres, preserve_weight)
    corrected: list[int] = []
    for _ in range(correct_rounds):
        extra = _correction(model, reqs, b, prefixes, z_site, deltas, chunk, opt)
        if extra is None:
            break
        corrected.append(int((extra != 0).any(-1).sum()))
        z = z + extra.double()[owner]
        deltas = _spread(model, b, layers, covs, z, mom2_weight, len(reqs), key_rows,
                         pres, preserve_weight)
    return MultiEdit(deltas, reqs, targets=z, info={
        "layers": layers, "mom2_weight": mom2_weight, "prefixes": len(prefixes),
        "preserve_weight": preserve_weight if pres else 0.0,
        "key_rows": key_rows, "clamp": clamp, "weight_decay": weight_decay,
        "p_target_mean": float(p.mean()), "p_target_min": float(p.min()),
        "delta_norm_mean": float(delta.norm(dim=-1).mean()),
        "corrected": corrected,
    })


def _correction(model: Model, reqs: list[EditRequest], b: _Batch, prefixes: Sequence[str],
                site: str, deltas: dict[int, torch.Tensor], chunk: int, opt: dict[str, float]
                ) -> torch.Tensor | None:
    """``[n, d_model]`` extra target shifts: for each request whose target is not the top-1
    continuation of its prompt with ``deltas`` applied, ``δ'`` optimised on the edited model at
    ``site`` (zero for the others); None when every request is met."""
    with weights_added(model, deltas):
        met = top1(model, [(r.prompt, r.target) for r in reqs])
        miss = [i for i, ok in enumerate(met) if not ok]
        if not miss:
            return None
        h = _read(model, b, site, len(reqs))
        d, _ = _chunked_targets(model, [reqs[i] for i in miss], prefixes, site, h[miss], chunk,
                                opt)
    extra = torch.zeros(len(reqs), d.shape[-1])
    extra[torch.tensor(miss)] = d
    return extra


def _chunked_targets(model: Model, reqs: list[EditRequest], prefixes: Sequence[str], site: str,
                     h0: torch.Tensor, chunk: int, opt: dict[str, float]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(δ, P(target))`` of all requests, ``chunk`` requests per batched optimisation
    (``opt``: steps, lr, kl_factor, weight_decay, clamp, stop_prob)."""
    was = model.hf.training
    model.hf.eval()
    ds, ps = [], []
    try:
        for a in range(0, len(reqs), chunk):
            part = reqs[a: a + chunk]
            tg = _Targets(model, _rows(model, part, prefixes), site, len(part),
                          opt["kl_factor"], opt["weight_decay"])
            d, p = _optimise_targets(tg, h0[a: a + chunk], int(opt["steps"]), opt["lr"],
                                     opt["clamp"], opt["stop_prob"])
            ds.append(d)
            ps.append(p)
    finally:
        if was:
            model.hf.train()
    return torch.cat(ds), torch.cat(ps)


def _preservation(model: Model, reqs: list[EditRequest], layers: list[int],
                  preserve: dict[int, torch.Tensor] | None, subjects: Sequence[str],
                  texts: Sequence[str] | None) -> dict[int, torch.Tensor]:
    """The preserved keys' second moment per edit layer: ``preserve`` where given, else read
    for ``subjects`` other than the requests' own from ``texts``."""
    out = {ly: preserve[ly] for ly in layers if preserve and ly in preserve}
    own = {r.subject for r in reqs}
    keep = [s for s in subjects if s not in own]
    missing = [ly for ly in layers if ly not in out]
    if missing and keep:
        if not texts:
            raise InputError("preserve_subjects needs sample texts (cov_texts=) to find them in")
        out.update(preserved_keys(model, missing, texts, keep))
    return out


def _spread(model: Model, b: _Batch, layers: list[int], covs: dict[int, torch.Tensor],
            z: torch.Tensor, lam: float, n: int, key_rows: str = "mean",
            preserve: dict[int, torch.Tensor] | None = None, mu: float = 0.0,
            ) -> dict[int, torch.Tensor]:
    """MEMIT's layer loop: each layer writes its share of the residual ``z - h`` (one row per
    request or per variant, ``key_rows`` as :func:`memit_edit`), holding the preserved keys
    (``preserve``, weight ``mu``) in place."""
    z_site = f"layers.{layers[-1]}.resid_post"
    deltas: dict[int, torch.Tensor] = {}
    for j, ly in enumerate(layers):
        with weights_added(model, deltas):
            keys = _read(model, b, f"layers.{ly}.mlp.hidden", n, key_rows)  # [rows, d_mlp]
            h = _read(model, b, z_site, n, key_rows)
        resid = (z - h) / (len(layers) - j)  # [n, d_model]
        deltas[ly] = least_squares_update(keys, resid, covs[ly], lam, (preserve or {}).get(ly),
                                          mu).float()
    return deltas


def least_squares_update(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor,
                         lam: float, preserve: torch.Tensor | None = None,
                         preserve_weight: float = 0.0) -> torch.Tensor:
    """MEMIT's batched least squares in float64: ``ΔW = Rᵀ K (λ C + μ P + Kᵀ K)⁻¹``
    (``[d_model, d_mlp]``), the ``ΔW`` minimising ``‖ΔW Kᵀ - Rᵀ‖² + λ · tr(ΔW C ΔWᵀ) + μ ·
    tr(ΔW P ΔWᵀ)``: the new keys ``K`` (``[n, d_mlp]``) written towards the residuals ``R``
    (``[n, d_model]``), the keys of ordinary text (covariance ``C``) held in place with weight
    ``λ``, and the preserved keys (second moment ``P``, :func:`preserved_keys`; none when
    ``None``) with weight ``μ`` (``preserve_weight``)."""
    k, r = keys.double(), resid.double()
    a = lam * cov.double() + k.T @ k
    if preserve is not None and preserve_weight > 0:
        a = a + preserve_weight * preserve.double()
    return torch.linalg.solve(a, k.T @ r).T


def _subject_pattern(subjects: Sequence[str]) -> re.Pattern[str] | None:
    """Whole-word occurrences of any of ``subjects`` (longest first); None when there are none."""
    subs = sorted({s for s in subjects if s.strip()}, key=len, reverse=True)
    if not subs:
        return None
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(s) for s in subs) + r")(?!\w)")


def preserved_keys(model: Model, layers: Sequence[int], texts: Sequence[str],
                   subjects: Sequence[str], *, batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Per layer, the second moment ``E[k kᵀ]`` (``[d_mlp, d_mlp]``, float64) of the keys at the
    last token of every whole-word occurrence of one of ``subjects`` in ``texts``: the subjects
    whose facts must not move: a targeted set of preserved keys added to MEMIT's preservation
    term (the preservation-memorisation view of Gupta et al. 2024, arXiv 2403.14236; AlphaEdit,
    Fang et al. 2025, protects preserved keys by a null-space projection instead). No layers when no subject
    occurs (nothing to preserve)."""
    pat = _subject_pattern(subjects)
    rows: list[tuple[list[int], int]] = []
    limit = model.max_length or 1 << 30
    for t in texts:
        hits = list(pat.finditer(t)) if pat is not None else []
        if not hits:
            continue
        offsets = model.tokenizer(t, return_offsets_mapping=True)["offset_mapping"]
        ids = model.encode(t)[:limit]
        for h in hits:
            pos = [i for i, (a, b) in enumerate(offsets) if b > a and a < h.end() and b > h.start()]
            if pos and max(pos) < len(ids):
                rows.append((ids, max(pos)))
    names = {ly: f"layers.{ly}.mlp.hidden" for ly in sorted(set(layers))}
    acc: dict[int, torch.Tensor] = {}
    for a in range(0, len(rows), batch_size):
        part = rows[a: a + batch_size]
        cache = run_with_cache(model, [ids for ids, _ in part], cache=list(names.values()),
                               logits=False)
        width = cache.attention_mask.shape[1]
        at = torch.tensor([width - len(ids) + p for ids, p in part])  # rows are left padded
        for ly, name in names.items():
            k = cache[name].double().cpu()[torch.arange(len(part)), at]
            acc[ly] = k.T @ k if ly not in acc else acc[ly] + k.T @ k
    return {ly: acc[ly] / len(rows) for ly in acc}


# --------------------------------------------------------------------------- evaluation
def _measure(model: Model, chosen: list[int], facts: list[dict[str, Any]],
             groups: dict[tuple[str, str], list[int]], new: list[str], spec: list[int],
             n_fluency: int, held_out: Sequence[str] = ()) -> tuple[dict[str, float],
                                                                    list[np.ndarray]]:
    """Efficacy, paraphrase, specificity, consistency, fluency and the LM loss on ``held_out``
    texts (nats/token; NaN without texts) of ``model`` as it is now, and the per-edit
    paraphrase results."""
    eff = top1(model, [(facts[i]["prompt"], t) for i, t in zip(chosen, new, strict=True)])
    para_pairs = [[(facts[j]["prompt"], t) for j in groups[fact_group(facts[i])] if j != i]
                  for i, t in zip(chosen, new, strict=True)]
    flat = top1(model, [p for ps in para_pairs for p in ps])
    cuts = np.cumsum([0] + [len(ps) for ps in para_pairs])
    para = [flat[cuts[k]: cuts[k + 1]] for k in range(len(chosen))]
    spc = top1(model, [(facts[j]["prompt"], facts[j]["answer"]) for j in spec])
    gen = [facts[j]["prompt"] for i in chosen[:n_fluency] for j in groups[fact_group(facts[i])]
           if j != i][:n_fluency]
    return {
        "n": len(chosen),
        "efficacy": float(eff.mean()),
        "paraphrase": float(flat.mean()) if len(flat) else float("nan"),
        "specificity": float(spc.mean()) if len(spc) else float("nan"),
        "consistency": consistency(eff, para),
        "fluency": fluency(model, gen),
        "lm_loss": lm_loss(model, held_out) if held_out else float("nan"),
    }, [eff, *para]


def evaluate_memit(
    model: Model,
    facts: Sequence[dict[str, Any]],
    *,
    n_edits: int = 100, layers: Sequence[int] | None = None, layer: int | None = None,
    trace_facts_n: int = 30, cov_texts: Sequence[str] | None = None,
    n_specificity: int = 200, n_fluency: int = 30, n_prefixes: int = 2, n_held_out: int = 200,
    seed: int = 0, progress: bool = True, **edit_kwargs: Any,
) -> EditReport:
    """Apply ``n_edits`` counterfactual edits of zoo-style ``facts`` at once with MEMIT and
    measure the edited model against the unedited one (rows ``"unedited"`` and ``"memit"``).

    Args:
        facts: as :func:`lmxray.improve.editing.evaluate_edits` takes them; at most one edit
            per subject is drawn (edits made together must not ask one subject's key for two
            values).
        cov_texts: text for the key covariances (default: :data:`COV_TEXTS` zoo texts).
        layers: the MEMIT layers; default :func:`default_layers` from ``layer`` (default: the
            layer :func:`~lmxray.improve.editing.locate_layer` selects).
        n_specificity: known facts of other subjects checked (neighbourhood).
        n_fluency: paraphrase prompts of edited facts generated from (20 tokens each).
        n_held_out: held-out zoo texts (``test`` split) the LM loss is read on (0: none).
        **edit_kwargs: passed to :func:`memit_edit`; ``preserve_subjects`` defaults to the
            subjects of ``facts`` not edited (their keys read from ``cov_texts``, never from
            the specificity prompts).
    """
    facts = list(facts)
    n_l = site_map(model).n_layers
    chosen, groups, known_idx, located, aie = plan_edits(
        model, facts, n_edits, layer, trace_facts_n, seed, one_per_subject=True)
    lys = list(layers) if layers is not None else default_layers(n_l, located)
    texts = list(cov_texts) if cov_texts is not None else corpus("train", COV_TEXTS, seed=seed)
    new = [t if t.startswith(" ") else " " + t
           for t in counterfactuals([facts[i] for i in chosen], facts, seed=seed)]
    edited_subjects = {str(facts[i].get("subject_text")) for i in chosen}
    others = [j for j in known_idx if str(facts[j].get("subject_text")) not in edited_subjects]
    spec = random.Random(seed + 2).sample(others, min(n_specificity, len(others)))
    held = corpus("test", n_held_out, seed=seed + 2) if n_held_out > 0 else []
    before, _ = _measure(model, chosen, facts, groups, new, spec, n_fluency, held)
    reqs = [EditRequest(facts[i]["prompt"], str(facts[i]["subject"]), t)
            for i, t in zip(chosen, new, strict=True)]
    edit_kwargs.setdefault("preserve_subjects", sorted(
        {str(f.get("subject_text", f.get("subject"))) for f in facts} - edited_subjects))
    ed = memit_edit(model, reqs, layers=lys, cov_texts=texts,
                    prefixes=context_prefixes(texts, n_prefixes, seed=seed), **edit_kwargs)
    with ed.applied(model):
        after, per = _measure(model, chosen, facts, groups, new, spec, n_fluency, held)
    edits = [{"prompt": facts[i]["prompt"], "subject": facts[i].get("subject_text"),
              "old": facts[i]["answer"], "new": t, "memit": {"efficacy": bool(per[0][k])}}
             for k, (i, t) in enumerate(zip(chosen, new, strict=True))]
    return EditReport(layer=located, aie=[float(v) for v in aie],
                      rows={"unedited": before, "memit": after}, edits=edits,
                      model_name=model.name,
                      info={"method": "memit", "layers": lys, "seed": seed,
                            "n_specificity": len(spec), "cov_texts": len(texts), **ed.info})


@dataclass
class BatchEditResult(ImproveResult):
    """A MEMIT batch (``lmxray edit --method memit --batch``): each request's greedy answer
    before and after, and the edit layers."""

    FORMAT: ClassVar[str] = "lmxray.edit-batch/1"

    layers: list[int]
    rows: list[dict[str, Any]]
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def batch_result(model: Model, edited: Model, ed: MultiEdit) -> BatchEditResult:
    """The greedy next token of each request's prompt in ``model`` and in ``edited``."""
    rows = [{"prompt": r.prompt, "subject": r.subject, "target": r.target,
             "before": model.generate(r.prompt, 1), "after": edited.generate(r.prompt, 1)}
            for r in ed.requests]
    return BatchEditResult(layers=list(ed.info.get("layers", sorted(ed.deltas))), rows=rows,
                           model_name=model.name, info=dict(ed.info))
