"""Explanation-regularised fine-tuning: "Right for the Right Reasons" (Ross, Hughes & Doshi-Velez
2017, arXiv 1703.03717).

RRR adds to the usual loss a penalty on the *input gradient* of the model's summed
log-probabilities at the inputs a user marks irrelevant::

    L(θ) = CE(θ) + λ · mean_n Σ_{i ∈ A_n} ‖ ∂/∂e_{n,i} Σ_k log p_θ(c_k | x_n) ‖²

``e_{n,i}`` is the input embedding of token ``i`` of example ``n``, ``A_n`` its irrelevant
tokens (e.g. a detected shortcut, see :mod:`lmxray.improve.shortcuts`), and ``c_k`` the
candidate answers (the classes: the first tokens of the training targets), read at the position
that predicts the answer. The penalty is differentiable (``create_graph=True``, double
backpropagation), so the optimiser is pushed toward parameters under which the marked tokens
do not move the answer — the model must find another reason, while examples without marked
tokens train as usual. ``λ = 0`` is plain fine-tuning with the same data, steps and seed.

:func:`finetune` never touches the user's model: it trains a deep copy, shows a progress bar,
checkpoints (``checkpoint/model.safetensors``, ``optimizer.safetensors``, ``state.json``;
no pickle) and resumes, and saves the result in Hugging Face format with ``finetune.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..attribution.gradient import resolve_baseline_ids
from ..errors import InputError, NumericalError
from ..examples import AnnotatedExample
from ..io import atomic_folder, atomic_write_text
from ..model import Model
from ..training import (
    load_checkpoint,
    read_state,
    remove_checkpoint,
    run_steps,
    save_checkpoint,
    step_generator,
    step_rng,
)
from ._common import as_labelled
from .results import ATTRIBUTIONS, FinetuneConfig, FinetuneResult

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "save_hf",
    "rrr_loss",
    "input_gradient_penalty",
    "path_attribution_penalty",
    "path_attributions",
    "occlusion_penalty",
    "class_token_ids",
]

FORMAT = FinetuneResult.FORMAT


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class _Encoded:
    prompt_ids: list[int]
    target_ids: list[int]
    irrelevant: tuple[int, ...]


def _encode(model: Model, examples: Sequence[AnnotatedExample]) -> list[_Encoded]:
    out = []
    for k, e in enumerate(examples):
        p, t = model.encode(e.prompt), model.encode_target(e.target)
        if not t:
            raise InputError(f"example {k}: the target {e.target!r} tokenizes to no tokens")
        model.check_length(len(p) + len(t))
        if any(i >= len(p) for i in e.irrelevant):
            raise InputError(
                f"example {k}: irrelevant positions {list(e.irrelevant)} are outside its prompt"
            )
        out.append(_Encoded(p, t, tuple(e.irrelevant)))
    return out


def class_token_ids(model: Any, examples: Sequence[AnnotatedExample]) -> tuple[list[int], list[str]]:
    """The distinct first target tokens of ``examples`` (the classes), as ids and strings."""
    ids = sorted(
        {model.encode_target(e.target)[0] for e in examples if model.encode_target(e.target)}
    )
    if not ids:
        raise InputError("the examples have no targets to take classes from")
    return ids, model.token_strings(ids)


def _collate(model: Model, batch: Sequence[_Encoded]) -> dict[str, torch.Tensor]:
    """Left-padded inputs ``prompt + target[:-1]`` with the targets right-aligned.

    Returns ``input_ids/attention_mask/position_ids [B, L]``, ``targets/target_mask [B, T]``
    (the last ``T`` positions predict them), ``first [B]`` (column in ``0..T-1`` of each row's
    first target) and ``irrelevant [B, L]`` (float mask in padded coordinates).
    """
    seqs = [b.prompt_ids + b.target_ids[:-1] for b in batch]
    ids, mask, pos = model.pad_batch(seqs)
    L = ids.shape[1]
    t_max = max(len(b.target_ids) for b in batch)
    tgt = torch.zeros((len(batch), t_max), dtype=torch.long)
    tmask = torch.zeros((len(batch), t_max), dtype=torch.bool)
    first = torch.zeros(len(batch), dtype=torch.long)
    irr = torch.zeros((len(batch), L))
    for r, b in enumerate(batch):
        n = len(b.target_ids)
        tgt[r, t_max - n :] = torch.as_tensor(b.target_ids)
        tmask[r, t_max - n :] = True
        first[r] = t_max - n
        pad = L - len(seqs[r])
        for i in b.irrelevant:
            irr[r, pad + i] = 1.0
    dev = model.device
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": pos,
        "targets": tgt.to(dev),
        "target_mask": tmask.to(dev),
        "first": first.to(dev),
        "irrelevant": irr.to(dev),
    }


# --------------------------------------------------------------------------- the loss
def _up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision is upcast; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def input_gradient_penalty(
    logits: torch.Tensor,
    embeds: torch.Tensor,
    first: torch.Tensor,
    class_ids: Sequence[int],
    irrelevant: torch.Tensor,
    *,
    create_graph: bool = True,
) -> torch.Tensor:
    """RRR's penalty: ``mean_n Σ_i irrelevant[n, i] ‖∂ Σ_k log p(c_k | x_n) / ∂ embeds[n, i]‖²``.

    Args:
        logits: ``[B, T, V]`` logits of the last ``T`` positions (computed from ``embeds``).
        embeds: ``[B, L, d]`` the input embeddings the forward read (part of the graph).
        first: ``[B]`` which of the ``T`` columns predicts each row's answer.
        class_ids: the candidate answer tokens ``c_k``.
        irrelevant: ``[B, L]`` weights (1 at marked tokens, else 0).
        create_graph: keep the graph of the gradient (needed to train on the penalty).

    Returns:
        A scalar tensor.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    logp = torch.log_softmax(_up(logits[rows, first]), dim=-1)  # [B, V]
    summed = logp[:, list(class_ids)].sum()
    (grad,) = torch.autograd.grad(summed, embeds, create_graph=create_graph)
    per_token = _up(grad).pow(2).sum(-1)  # [B, L]
    return (per_token * irrelevant).sum() / logits.shape[0]


def path_attributions(
    model: Model,
    batch: dict[str, torch.Tensor],
    embeds: torch.Tensor,
    class_ids: Sequence[int],
    baseline: torch.Tensor,
    alpha: torch.Tensor,
    *,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-point integrated-gradients attributions of the marked tokens, per class.

    The marked tokens' embeddings move on the straight path from ``baseline`` to their value,
    ``b + α (e - b)``, the other tokens stay; ``IG_k(n) = Σ_{i marked} (e_i - b) · ∂ log p(c_k) /
    ∂e_i`` at ``α`` (a one-sample estimate of the path integral when ``α ~ U(0, 1)``, as expected
    gradients, Erion et al. 2021). By completeness its mean over ``α`` is ``log p_k(x) -
    log p_k(x with the marked tokens at the baseline)``.

    Args:
        batch: a collated batch (its ``irrelevant`` mask marks the tokens).
        embeds: ``[B, L, d]`` input embeddings. baseline: ``[d]``, or ``[B, d]`` (one per row).
        alpha: ``[B]`` path points.

    Returns:
        ``(ig [R, K], rows [R])``: attributions of the ``R`` rows that have marked tokens.
    """
    sel = batch["irrelevant"].bool().any(-1).nonzero().flatten()
    if len(sel) == 0:
        return torch.zeros((0, len(class_ids)), device=embeds.device), sel
    irr = batch["irrelevant"][sel][..., None]  # [R, L, 1]
    e = embeds[sel]
    b = baseline[sel][:, None, :] if baseline.dim() == 2 else baseline
    diff = (e - b) * irr
    path = e - diff + alpha[sel][:, None, None].to(e.dtype) * diff  # marked: b + α (e - b)
    t_max = batch["targets"].shape[1]
    logits = model.forward(
        inputs_embeds=path,
        attention_mask=batch["attention_mask"][sel],
        position_ids=batch["position_ids"][sel],
        logits_to_keep=t_max,
    ).logits
    rows = torch.arange(len(sel), device=logits.device)
    logp = torch.log_softmax(_up(logits[rows, batch["first"][sel]]), dim=-1)  # [R, V]
    ids = list(class_ids)
    cols = []
    for j, c in enumerate(ids):
        (g,) = torch.autograd.grad(
            logp[:, c].sum(),
            path,
            create_graph=create_graph,
            retain_graph=create_graph or j < len(ids) - 1,
        )
        cols.append(_up(diff * g).sum(dim=(1, 2)))  # [R]
    return torch.stack(cols, dim=1), sel


def path_attribution_penalty(
    model: Model, batch: dict[str, torch.Tensor], embeds: torch.Tensor, class_ids: Sequence[int],
    baseline: torch.Tensor, alpha: torch.Tensor, *, create_graph: bool = True,
) -> torch.Tensor:
    """The integrated-gradients penalty ``mean_n Σ_k IG_k(n)²`` (see :func:`path_attributions`).

    Unlike the local input gradient, whose value at the token a network can flatten while the
    token still changes the answer, the path attribution's mean is the change the token makes.
    """
    ig, _ = path_attributions(
        model, batch, embeds, class_ids, baseline, alpha, create_graph=create_graph
    )
    return ig.pow(2).sum() / embeds.shape[0]


def occlusion_penalty(
    model: Model,
    logits: torch.Tensor,
    first: torch.Tensor,
    occluded: dict[str, torch.Tensor] | None,
    rows: torch.Tensor,
    class_ids: Sequence[int],
    n: int,
) -> torch.Tensor:
    """The occlusion penalty ``(1/n) Σ_{rows} Σ_k (log p(c_k | x) - log p(c_k | x'))²``.

    ``x'`` is the example with its marked tokens replaced by baseline tokens (by default random
    in-distribution tokens, new ones every step) or deleted (``baseline="remove"``), so each term
    is the square of the marked tokens' occlusion attribution to class ``c_k``: the exact change
    they make, which — unlike a local gradient — a network cannot flatten while the tokens
    still move the answer. Deletion is gameable: the deleted text ("I watched it on.") occurs
    only as the counterfactual, so a network can answer it like the marker (measured on the
    zoo); random replacements occur in training too. First order (no double
    backpropagation): one more forward pass over the rows that have marked tokens. Both passes
    are differentiated.

    Args:
        logits: ``[B, T, V]`` logits of the full batch; ``first`` ``[B]`` its answer columns.
        occluded: the collated batch of ``rows`` with their marked tokens replaced or deleted.
        rows: ``[R]`` indices into the batch of the rows in ``occluded``.
        n: the batch size the penalty is averaged over.
    """
    if len(rows) == 0 or occluded is None:
        return torch.zeros((), device=logits.device)
    ids = list(class_ids)
    lp_full = torch.log_softmax(_up(logits[rows, first[rows]]), dim=-1)[:, ids]
    t_max = occluded["targets"].shape[1]
    lo = model.forward(
        input_ids=occluded["input_ids"],
        attention_mask=occluded["attention_mask"],
        position_ids=occluded["position_ids"],
        logits_to_keep=t_max,
    ).logits
    r = torch.arange(len(rows), device=lo.device)
    lp_occ = torch.log_softmax(_up(lo[r, occluded["first"]]), dim=-1)[:, ids]
    return (lp_full - lp_occ).pow(2).sum() / n


def rrr_loss(
    model: Model,
    batch: dict[str, torch.Tensor],
    class_ids: Sequence[int],
    lam: float,
    *,
    penalty: bool = True,
    create_graph: bool = True,
    attribution: str = "gradient",
    baseline: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    occluded: dict[str, torch.Tensor] | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, penalty)`` of one collated batch: ``loss = ce + lam * penalty``.

    ``ce`` is the mean cross-entropy over every target token. ``attribution="gradient"`` is
    Ross et al.'s input-gradient penalty (:func:`input_gradient_penalty`); ``"ig"`` the
    integrated-gradients one (:func:`path_attribution_penalty`, needs ``baseline`` ``[d]`` and
    ``alpha`` ``[B]``); ``"occlusion"`` the replacement/deletion one (:func:`occlusion_penalty`,
    needs the ``occluded`` batch of ``rows``). With ``penalty=False`` the penalty is not computed
    (returned as 0).
    """
    emb = model.embed(batch["input_ids"])
    t_max = batch["targets"].shape[1]
    logits = model.forward(
        inputs_embeds=emb,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=t_max,
    ).logits
    tm = batch["target_mask"]
    ce = F.cross_entropy(_up(logits[tm]), batch["targets"][tm])
    if not penalty:
        zero = torch.zeros((), device=ce.device)
        return ce, ce, zero
    if attribution == "ig":
        if baseline is None or alpha is None:
            raise InputError(
                "the integrated-gradients penalty needs a baseline and path points alpha"
            )
        if alpha.dim() == 1:
            pen = path_attribution_penalty(
                model, batch, emb, class_ids, baseline, alpha, create_graph=create_graph
            )
        else:  # several path points per example: average their penalties
            pens = [
                path_attribution_penalty(
                    model,
                    batch,
                    emb,
                    class_ids,
                    baseline[:, j] if baseline.dim() == 3 else baseline,
                    alpha[:, j],
                    create_graph=create_graph,
                )
                for j in range(alpha.shape[1])
            ]
            pen = torch.stack(pens).mean()
    elif attribution == "occlusion":
        if rows is None or (occluded is None and len(rows) > 0):
            raise InputError("the occlusion penalty needs the occluded batch and its rows")
        pen = occlusion_penalty(
            model, logits, batch["first"], occluded, rows, class_ids, logits.shape[0]
        )
    elif attribution == "gradient":
        pen = input_gradient_penalty(
            logits, emb, batch["first"], class_ids, batch["irrelevant"], create_graph=create_graph
        )
    else:
        raise InputError(
            f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {attribution!r}"
        )
    return ce + lam * pen, ce, pen


# --------------------------------------------------------------------------- checkpoints
def _settings_key(
    cfg: FinetuneConfig, data: Sequence[_Encoded], class_ids: Sequence[int], name: str
) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(json.dumps([[e.prompt_ids, e.target_ids, list(e.irrelevant)] for e in data]).encode())
    h.update(json.dumps([list(class_ids), name]).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _eager(hf: Any) -> Iterator[None]:
    """Eager attention for double backpropagation (fused kernels may lack it); restored after."""
    before = getattr(hf.config, "_attn_implementation", None)
    setter = getattr(hf, "set_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    try:
        if setter is not None:
            setter("eager")
        else:
            hf.config._attn_implementation = "eager"
        yield
    finally:
        if setter is not None:
            setter(before)
        else:
            hf.config._attn_implementation = before


def _baseline_pool(model: Model, data: Sequence[_Encoded]) -> list[int]:
    """Token ids of the training prompts at unmarked positions (no special tokens, no marked ids)."""
    specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    marked = {e.prompt_ids[i] for e in data for i in e.irrelevant}
    pool = {t for e in data for i, t in enumerate(e.prompt_ids) if i not in e.irrelevant}
    return sorted(pool - specials - marked)


def _penalty_inputs(
    model: Model,
    cfg: FinetuneConfig,
    step: int,
    batch: dict[str, torch.Tensor],
    pool: Sequence[int] = (),
    items: Sequence[_Encoded] = (),
) -> dict[str, Any]:
    """``attribution``, and for IG the baselines (``[B, d]`` or ``[d]``; ``[B, S, d]`` with
    ``S = ig_samples > 1``) and path points ``[B]`` (``[B, S]``), functions of ``(seed, step)``;
    for occlusion the batch ``items`` (collated as ``batch``) with their marked tokens replaced by
    baseline tokens, or deleted with ``baseline="remove"``."""
    if cfg.attribution == "occlusion":
        rows = [r for r, e in enumerate(items) if e.irrelevant]
        n_marked = sum(len(items[r].irrelevant) for r in rows)
        if cfg.baseline == "remove":
            picks: list[int | None] = [None] * n_marked  # None: delete the token
        elif cfg.baseline == "sample":  # one random unmarked token per marked token and step
            if not pool:
                raise InputError("no unmarked tokens to sample baselines from")
            gen = step_generator(cfg.seed, step)
            picks = [int(pool[j]) for j in torch.randint(len(pool), (n_marked,), generator=gen)]
        else:
            bid, _ = resolve_baseline_ids(model, cfg.baseline)
            if bid is None:
                raise InputError(
                    "the occlusion penalty replaces tokens: give a token baseline "
                    "('sample', 'pad', 'unk', 'eos', an id) or 'remove'"
                )
            picks = [int(bid)] * n_marked
        it = iter(picks)
        occ = []
        for r in rows:
            marked = set(items[r].irrelevant)
            ids = [next(it) if i in marked else t for i, t in enumerate(items[r].prompt_ids)]
            occ.append(_Encoded([t for t in ids if t is not None], items[r].target_ids, ()))
        return {
            "attribution": "occlusion",
            "occluded": _collate(model, occ) if occ else None,
            "rows": torch.tensor(rows, dtype=torch.long, device=model.device),
        }
    if cfg.attribution != "ig":
        return {"attribution": "gradient"}
    gen = step_generator(cfg.seed, step)
    n, k = batch["input_ids"].shape[0], cfg.ig_samples
    alpha = torch.rand(n * k, generator=gen).to(model.device, model.dtype)
    alpha = alpha if k == 1 else alpha.view(n, k)
    if cfg.baseline == "sample":
        if not pool:
            raise InputError("no unmarked tokens to sample baselines from; use baseline='auto'")
        pick = torch.as_tensor(list(pool))[torch.randint(len(pool), (n * k,), generator=gen)]
        base = model.embed(pick.to(model.device)).detach()
        base = base if k == 1 else base.view(n, k, -1)
    else:
        bid, _ = resolve_baseline_ids(model, cfg.baseline)
        base = (
            torch.zeros(model.d_model, device=model.device, dtype=model.dtype)
            if bid is None
            else model.embed(torch.tensor([bid], device=model.device))[0].detach()
        )
    return {"attribution": "ig", "baseline": base, "alpha": alpha}


def _batch_indices(n: int, size: int, seed: int, step: int) -> list[int]:
    return step_rng(seed, step).integers(0, n, size=size).tolist()


# --------------------------------------------------------------------------- fine-tuning
def _class_ids(
    model: Model, data: Sequence[AnnotatedExample], classes: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    """The classes' first-token ids and strings: of ``classes`` when given, else of the targets."""
    if classes is None:
        return class_token_ids(model, data)
    ids = []
    for c in classes:
        t = model.encode_target(c)
        if not t:
            raise InputError(f"the class {c!r} tokenizes to no tokens")
        ids.append(t[0])
    ids = sorted(set(ids))
    return ids, model.token_strings(ids)


def _check_out_dir(out_dir: str | os.PathLike[str] | None) -> Path | None:
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file; give a folder")
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist; create it first")
    return out


def _resume(
    ckpt: Path | None, key: str, resume: bool, hf: Any, opt: Any
) -> tuple[int, list[dict[str, float]]]:
    """``(start step, history)``: from the checkpoint when ``resume`` and its settings key
    matches; a checkpoint of other settings is refused unless ``resume`` is False."""
    state = read_state(ckpt) if ckpt is not None else None
    if state is None or not resume:
        return 0, []
    if state.get("key") != key:
        raise InputError(
            f"the checkpoint in {ckpt} was made with other settings or data; pass "
            "resume=False (--no-resume) to start over"
        )
    state = load_checkpoint(ckpt, hf, opt)  # type: ignore[arg-type]
    return int(state["step"]), list(state["history"])


@dataclass
class _Steps:
    """One optimisation step of :func:`finetune` (a function of ``(seed, step)`` and the
    weights, so a resumed run repeats the uninterrupted one exactly)."""

    tuned: Model
    opt: Any
    cfg: FinetuneConfig
    enc: list[_Encoded]
    pool: list[int]
    class_ids: list[int]
    history: list[dict[str, float]]
    log_every: int

    def __call__(self, step: int) -> Mapping[str, str] | None:
        cfg, tuned = self.cfg, self.tuned
        items = [self.enc[i] for i in _batch_indices(len(self.enc), cfg.batch_size, cfg.seed, step)]
        batch = _collate(tuned, items)
        for g in self.opt.param_groups:  # linear decay to 10% over the run (resumes exactly)
            g["lr"] = cfg.lr * (1 - 0.9 * step / cfg.steps)
        log = step % self.log_every == 0 or step == cfg.steps - 1
        kw = _penalty_inputs(tuned, cfg, step, batch, self.pool, items)
        loss, ce, pen = rrr_loss(tuned, batch, self.class_ids, cfg.lam, penalty=cfg.lam > 0, **kw)
        if log and cfg.lam == 0:
            _, _, pen = rrr_loss(
                tuned, batch, self.class_ids, 0.0, penalty=True, create_graph=False, **kw
            )
        if not torch.isfinite(loss):
            raise NumericalError(
                f"the fine-tuning loss became {loss.item()} at step {step}; lower the "
                "learning rate or the penalty weight"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(tuned.hf.parameters(), cfg.grad_clip)
        self.opt.step()
        if not log:
            return None
        ce_v, pen_v = float(ce.detach()), float(pen.detach())
        self.history.append({"step": step, "ce": round(ce_v, 5), "penalty": round(pen_v, 6)})
        return {"ce": f"{ce_v:.3f}", "pen": f"{pen_v:.3g}"}


def finetune(
    model: Model,
    examples: Sequence[Any],
    *,
    lam: float | None = None,
    config: FinetuneConfig | None = None,
    irrelevant: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    checkpoint_every: int = 50,
    log_every: int = 10,
    progress: bool = True,
    stop_after: int | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on ``examples``, with RRR's penalty when ``lam > 0``.

    Args:
        model: the lmxray Model (left unchanged; a deep copy is trained).
        examples: training examples (see :func:`lmxray.improve._common.as_labelled`); their
            ``irrelevant`` marks are penalised.
        lam: penalty weight λ (overrides ``config.lam``; 0 = plain fine-tuning).
        config: :class:`FinetuneConfig` (steps, batch size, learning rate, seed...).
        irrelevant: words to mark irrelevant wherever they occur (e.g. ``["Tuesday"]``).
        classes: candidate answers (targets, e.g. ``[" positive", " negative"]``) whose summed
            log-probability is differentiated; default: the first tokens of the targets.
        out_dir: save the result there (HF format + ``finetune.json``) and checkpoint into
            ``out_dir/checkpoint`` every ``checkpoint_every`` steps; rerun to resume.
        resume: resume from a checkpoint with the same settings (else raise; ``False`` restarts).
        log_every: steps between history rows (the penalty is measured for plain runs too).
        progress: show a tqdm progress bar.
        stop_after: stop after this many steps in total with a checkpoint, as if interrupted.

    Returns:
        :class:`FinetuneResult` with the fine-tuned copy.

    Raises:
        lmxray.training.Interrupted: on Ctrl-C / SIGTERM, after the step in progress and a
            checkpoint (with ``out_dir``): rerun the same call to resume.

    Example:
        >>> r = finetune(m, train, lam=100.0, irrelevant=["Tuesday"], out_dir="runs/rrr")  # doctest: +SKIP
    """
    cfg = config or FinetuneConfig()
    if lam is not None:
        cfg = dataclasses.replace(cfg, lam=float(lam))
    data = as_labelled(examples, model, irrelevant=irrelevant)
    enc = _encode(model, data)
    class_ids, class_names = _class_ids(model, data, classes)
    n_marked = sum(1 for e in enc if e.irrelevant)
    if cfg.lam > 0 and n_marked == 0:
        raise InputError(
            "no example has tokens marked irrelevant, so the penalty is always 0; mark some "
            "(irrelevant=[...], the examples' 'irrelevant' field, or a detected shortcut)"
        )
    out = _check_out_dir(out_dir)
    key = _settings_key(cfg, enc, class_ids, model.name)
    hf = copy.deepcopy(model.hf)
    tuned = Model(hf, model.tokenizer, name=f"{model.name}+{'rrr' if cfg.lam > 0 else 'ft'}")
    opt = torch.optim.AdamW(hf.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint" if out is not None else None
    start, history = _resume(ckpt, key, resume, hf, opt)
    end = cfg.steps if stop_after is None else min(cfg.steps, int(stop_after))
    step = _Steps(tuned, opt, cfg, enc, _baseline_pool(model, enc), class_ids, history, log_every)

    def checkpoint(at: int) -> None:
        state = {"key": key, "step": at, "history": history, "config": dataclasses.asdict(cfg)}
        save_checkpoint(ckpt, hf, opt, state)  # type: ignore[arg-type]

    t0 = time.time()
    hf.train()
    for p in hf.parameters():
        p.requires_grad_(True)
    with _eager(hf):
        try:
            run_steps(step, start=start, end=end, total=cfg.steps,
                      checkpoint=checkpoint if ckpt is not None else None,
                      checkpoint_every=checkpoint_every, checkpoint_folder=ckpt,
                      desc="rrr fine-tune" if cfg.lam > 0 else "fine-tune", progress=progress)
        finally:
            hf.eval()
            opt.zero_grad(set_to_none=True)
    info = {"wall_s": round(time.time() - t0, 2), "resumed_from": start, "settings_key": key,
            "base_model": model.name}
    result = FinetuneResult(tuned, cfg, history, class_names, len(enc), n_marked, None, info)
    if end < cfg.steps:
        if ckpt is not None:
            checkpoint(end)
        return result
    if out is not None:
        result.path = save_hf(result, out)
        remove_checkpoint(out / "checkpoint")
    return result


def save_hf(result: FinetuneResult, out: str | os.PathLike[str]) -> Path:
    """Save the fine-tuned model in Hugging Face format (+ ``finetune.json``), file by file
    atomically: everything is written to a temporary folder first, then moved in."""
    out = Path(out)
    if result.model is None:
        raise InputError("this FinetuneResult holds no model (it was read from finetune.json)")
    with atomic_folder(out) as tmp:
        result.model.hf.save_pretrained(str(tmp))
        result.model.tokenizer.save_pretrained(str(tmp))
    atomic_write_text(out / "finetune.json", result.to_json(indent=1) + "\n")
    return out
