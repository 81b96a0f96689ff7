"""Training sparse autoencoders on streamed activations, on the one loop of :mod:`lmxray.training`.

Recipe (see ``docs/concepts.md``): inputs scaled by one constant so ``E‖x‖ = √d`` (folded into
the weights at the end), ``b_dec`` initialised at the geometric median of the first batch, tied
initialisation (``W_enc = W_decᵀ``, unit decoder rows), loss = per-token squared error summed over
``d`` + the kind's sparsity term + ``aux_coef`` × AuxK (Gao et al.: the ``k_aux`` largest
pre-activations of *dead* latents — silent for ``dead_tokens`` tokens — reconstruct the residual);
Adam, gradient clipping at 1, linear learning-rate decay over the last 20%; the decoder-norm
constraint keeps every decoder row at unit norm (parallel gradient removed, rows renormalised).

Sparsity by kind: ``topk`` none (k is the constraint); ``batchtopk`` none, and the inference
threshold is an EMA of the batch's smallest kept activation; ``jumprelu`` ``l0_coef · L0`` with
the straight-through estimator of Rajamanoharan et al. (rectangle kernel, bandwidth
``bandwidth``); ``relu`` ``l1 · Σ|f|``.

Checkpoints (``checkpoint=folder``) hold the SAE, Adam's state and the JSON state (step, texts
consumed, input scale, latents' silence counters); ``resume=True`` continues where it stopped and
computes the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import training
from ..errors import InputError
from ..sites import site_map
from .data import ActivationStream, check_corpus, site_width
from .sae import KINDS, SAE, SAEConfig

__all__ = ["TrainConfig", "TrainRun", "fit_sae", "train_sae"]


@dataclass
class TrainConfig:
    """Settings of a training run (defaults suit the zoo model's residual stream)."""

    # the SAE
    kind: str = "topk"
    d_sae: int = 1024
    k: int = 32
    # the run
    steps: int = 600
    batch_tokens: int = 2048
    lr: float = 1e-3
    seed: int = 0
    # sparsity terms: L1 (relu), L0 with its straight-through bandwidth (jumprelu)
    l1: float = 1.4
    l0_coef: float = 0.05
    bandwidth: float = 0.05
    init_threshold: float = 0.6
    # dead latents: silent for dead_tokens tokens, revived by the AuxK loss
    aux_coef: float = 1 / 32
    k_aux: int = 64
    dead_tokens: int = 100_000

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown SAE kind {self.kind!r}; use one of {', '.join(KINDS)}")
        for name in ("d_sae", "k", "steps", "batch_tokens", "k_aux", "dead_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "bandwidth", "init_threshold"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise InputError(f"{name} must be a positive number, got {v!r}")
        for name in ("l1", "l0_coef", "aux_coef"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a number >= 0, got {v!r}")
        if self.kind in ("topk", "batchtopk") and self.k > self.d_sae:
            raise InputError(f"k={self.k} exceeds the SAE width {self.d_sae}; use k <= width")


@dataclass
class TrainRun:
    """A trained SAE and how training went (``info``: tokens, seconds, tokens/s, last losses)."""

    sae: SAE
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- STE pieces
class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = ((z - theta).abs() < eps / 2).to(z.dtype)
        g_theta = (-(theta / eps) * kernel * g).sum(0)
        return g * (z > theta).to(z.dtype), g_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = ((z - theta).abs() < eps / 2).to(z.dtype)
        return torch.zeros_like(z), (-(1.0 / eps) * kernel * g).sum(0), None


# --------------------------------------------------------------------------- the trainer
class _Trainer:
    """State of one run: the SAE, Adam, the input scale, silence counters."""

    def __init__(self, sae: SAE, cfg: TrainConfig) -> None:
        self.sae, self.cfg = sae, cfg
        self.opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad],
                                    lr=cfg.lr, betas=(0.9, 0.999))
        self.scale = 1.0
        self.silent = torch.zeros(sae.cfg.d_sae)
        self.last: dict[str, float] = {}

    def init_from(self, x: torch.Tensor) -> None:
        """Scale, geometric-median ``b_dec`` and tied weights from the first batch."""
        cfg, sae = self.cfg, self.sae
        self.scale = float(math.sqrt(x.shape[1]) / x.norm(dim=-1).mean().clamp_min(1e-8))
        x = x * self.scale
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            sae.b_dec.copy_(_geometric_median(x))
            w = torch.randn(sae.cfg.d_sae, sae.cfg.d_in, generator=g)
            sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
            sae.b_enc.zero_()
            sae.log_threshold.fill_(math.log(cfg.init_threshold))

    def activate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training latents and the sparsity penalty."""
        cfg, sae = self.cfg, self.sae
        zero = z.new_zeros(())
        if cfg.kind == "topk":
            return sae.activate(z), zero
        if cfg.kind == "batchtopk":
            flat = z.relu().flatten()
            keep = flat.topk(min(cfg.k * z.shape[0], flat.numel())).indices
            f = torch.zeros_like(flat).scatter(0, keep, flat[keep]).view_as(z)
            pos = f[f > 0]
            if len(pos):
                self._track_threshold(float(pos.min().detach()))
            return f, zero
        if cfg.kind == "jumprelu":
            theta = sae.threshold
            f = _JumpReLU.apply(z.relu(), theta, cfg.bandwidth)
            l0 = _Step.apply(z.relu(), theta, cfg.bandwidth).sum(-1).mean()
            return f, cfg.l0_coef * l0
        f = z.relu()
        return f, cfg.l1 * f.sum(-1).mean()

    steps_done = 0

    @torch.no_grad()
    def _track_threshold(self, smallest: float) -> None:
        """BatchTopK's inference threshold from the batch's smallest kept activation: an EMA
        (rate 0.01) while training moves, then the plain mean over the last 20% of steps (the
        learning-rate decay, where the SAE settles). An EMA alone lags: the smallest kept
        activation falls as training goes, and in a short run the EMA still remembers the early,
        larger values (inference L0 was half of k)."""
        done, last = self.steps_done, int(0.8 * self.cfg.steps)
        if done >= last:
            rate = 1.0 / (done - last + 1)
        else:
            rate = 1.0 if done == 0 else 0.01
        t = float(self.sae.threshold[0])
        self.sae.log_threshold.fill_(math.log(max((1 - rate) * t + rate * smallest, 1e-8)))

    def step(self, x: torch.Tensor, lr: float) -> dict[str, float]:
        cfg, sae = self.cfg, self.sae
        x = x * self.scale
        z = sae.pre(x)
        f, sparsity = self.activate(z)
        xh = sae.decode(f)
        mse = ((xh - x) ** 2).sum(-1).mean()
        fired = (f > 0).any(0)
        self.silent += x.shape[0]
        self.silent[fired] = 0
        aux = self._aux(z, x - xh.detach())
        loss = mse + sparsity + cfg.aux_coef * aux
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.opt.step()
        sae.normalise_decoder()
        self.steps_done += 1
        var = ((x - x.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-8)
        mse = mse.detach()
        self.last = {"mse": float(mse), "fve": float(1 - mse / var),
                     "l0": float((f > 0).sum(-1).float().mean()),
                     "dead": float((self.silent >= cfg.dead_tokens).float().mean())}
        return self.last

    def _aux(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        dead = self.silent >= self.cfg.dead_tokens
        n = int(dead.sum())
        if n == 0 or self.cfg.aux_coef == 0:
            return z.new_zeros(())
        zd = torch.where(dead, z, torch.full_like(z, -torch.inf))
        vals, idx = zd.topk(min(self.cfg.k_aux, n), dim=-1)
        fd = torch.zeros_like(z).scatter(-1, idx, vals.relu())
        err = fd @ self.sae.W_dec
        return ((err - residual) ** 2).sum(-1).mean() / (residual ** 2).sum(-1).mean().clamp_min(1e-8)

    def lr_at(self, step: int) -> float:
        start = int(0.8 * self.cfg.steps)
        if step < start:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, (self.cfg.steps - step) / max(1, self.cfg.steps - start))


def _geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Weiszfeld's iterations from the mean."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


# --------------------------------------------------------------------------- runs
def fit_sae(
    batches: Callable[[int], torch.Tensor], d_in: int, cfg: TrainConfig | None = None, *,
    site: str = "", model_name: str = "", checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True, progress: bool = True, checkpoint_every: int = 100,
    state_extra: Callable[[], dict[str, Any]] | None = None,
) -> TrainRun:
    """Train an SAE on ``batches(step) -> [batch_tokens, d_in]`` (any activation source).

    ``checkpoint``: a folder for checkpoints (every ``checkpoint_every`` steps and on Ctrl-C,
    SIGTERM); with ``resume``
    a run found there continues. ``state_extra()`` adds to the checkpoint's JSON state.
    """
    cfg = cfg or TrainConfig()
    cfg.check()
    sae = SAE(SAEConfig(d_in, cfg.d_sae, cfg.kind, cfg.k, site, model_name))
    trainer = _Trainer(sae, cfg)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = training.read_state(ckpt) if ckpt is not None and resume else None
    start = 0
    if state:
        training.load_checkpoint(ckpt, sae, trainer.opt)  # type: ignore[arg-type]
        start, trainer.scale = int(state["step"]), float(state["scale"])
        trainer.silent = torch.tensor(state["silent"], dtype=torch.float32)
        trainer.steps_done = start
    tokens, t0 = 0, time.perf_counter()

    def step(i: int) -> dict[str, str]:
        nonlocal tokens
        x = batches(i).float()
        if i == 0:
            trainer.init_from(x)
        tokens += len(x)
        last = trainer.step(x, trainer.lr_at(i))
        return {"l0": f"{last['l0']:.1f}", "fve": f"{last['fve']:.3f}", "dead": f"{last['dead']:.2f}"}

    def save(at: int) -> None:
        st = {"step": at, "scale": trainer.scale, "silent": trainer.silent.tolist(),
              "config": asdict(cfg), **(state_extra() if state_extra else {})}
        training.save_checkpoint(ckpt, sae, trainer.opt, st)  # type: ignore[arg-type]

    training.run_steps(step, start=start, end=cfg.steps, checkpoint=save if ckpt else None,
                       checkpoint_every=checkpoint_every, checkpoint_folder=ckpt, desc=f"sae {cfg.kind}",
                       progress=progress)
    seconds = time.perf_counter() - t0
    sae.fold_scale(trainer.scale)
    sae.requires_grad_(False)
    info = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9),
            "scale": trainer.scale, "resumed_from": start, "config": asdict(cfg), **trainer.last}
    return TrainRun(sae.eval(), info)


def train_sae(
    model: Any, site: str, cfg: TrainConfig | None = None, *, corpus: Any = None,
    max_len: int = 128, checkpoint: str | os.PathLike[str] | None = None, resume: bool = True,
    progress: bool = True,
) -> TrainRun:
    """Train an SAE at ``site`` of ``model`` on activations streamed from ``corpus`` (the zoo
    training stream by default; see :mod:`lmxray.concepts.data`)."""
    cfg = cfg or TrainConfig()
    cfg.check()
    name = site_map(model)[site].name
    corpus = check_corpus(corpus)
    skip = 0
    if checkpoint is not None and resume:
        state = training.read_state(checkpoint)
        skip = int(state.get("texts", 0)) if state else 0
    stream = ActivationStream(model, name, corpus, batch_tokens=cfg.batch_tokens,
                              max_len=max_len, seed=cfg.seed, skip=skip)
    d_in = site_width(model, name)
    run = fit_sae(stream.as_fn(), d_in, cfg, site=name, model_name=model.name,
                  checkpoint=checkpoint, resume=resume, progress=progress,
                  state_extra=lambda: {"texts": stream.consumed})
    run.info["texts"] = stream.consumed
    return run

