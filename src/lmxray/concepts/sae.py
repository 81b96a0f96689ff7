"""The sparse autoencoder: four kinds, one module, SAELens' on-disk format.

``f = σ((x − b_dec) W_enc + b_enc)``, ``x̂ = f W_dec + b_dec`` with σ by kind:

- ``topk`` (Gao et al. 2024): the ``k`` largest pre-activations of each token, ReLU'd;
- ``batchtopk`` (Bussmann et al. 2024): trained keeping the top ``k·B`` of a batch; at inference
  a JumpReLU with one global threshold (saved as SAELens' ``jumprelu``, as SAELens does);
- ``jumprelu`` (Rajamanoharan et al. 2024): ``z · H(z − θ)`` with a per-latent threshold;
- ``relu`` (Bricken et al. 2023; SAELens' ``standard``): ``ReLU(z)``, trained with an L1 penalty.

Weights always act on the raw activations of the site: the constant input scaling used in
training is folded into the weights at the end (so a saved SAE needs no normalisation step and
SAELens reads it with ``normalize_activations: none``).

Files: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (SAELens 6 layout: ``W_enc``
``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold`` for
``jumprelu``); lmxray's own keys live in ``cfg.json``'s ``metadata`` (``lmxray_kind``,
``lmxray_site``, ``model_name``, ``hook_name``). Folders written by SAELens load too
(architectures ``standard``, ``topk``, ``jumprelu``; ``log_threshold`` is exponentiated).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import io
from ..errors import FormatError, InputError

__all__ = ["KINDS", "SAEConfig", "SAE", "load_sae", "CFG_FILE", "WEIGHTS_FILE"]

KINDS = ("topk", "batchtopk", "jumprelu", "relu")
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
# lmxray kind -> SAELens architecture, and back
_ARCH = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}
_KIND = {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu"}


@dataclass
class SAEConfig:
    """Shape and kind of an SAE.

    Attributes:
        d_in / d_sae: input width (the site's) and number of latents.
        kind: one of :data:`KINDS`.
        k: active latents per token (``topk``, ``batchtopk``).
        site / model: where it was trained (``layers.2.resid_post``, the model's name).
        meta: other SAELens metadata kept on a round trip.
    """

    d_in: int
    d_sae: int
    kind: str = "topk"
    k: int = 32
    site: str = ""
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown SAE kind {self.kind!r}; use one of {', '.join(KINDS)}")
        for name in ("d_in", "d_sae", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"SAE {name} must be a positive integer, got {v!r}")
        if self.kind in ("topk", "batchtopk") and self.k > self.d_sae:
            raise InputError(f"SAE k={self.k} exceeds its width d_sae={self.d_sae}; use k <= d_sae")


class SAE(torch.nn.Module):
    """A sparse autoencoder (see the module docstring). ``encode``/``decode`` make it attachable
    at a site (:func:`lmxray.concepts.attach`)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        self.W_enc = torch.nn.Parameter(torch.zeros(d, n))
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.W_dec = torch.nn.Parameter(torch.zeros(n, d))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        # JumpReLU / BatchTopK inference threshold (log-space parameter for training)
        self.log_threshold = torch.nn.Parameter(torch.full((n,), -20.0),
                                                requires_grad=cfg.kind == "jumprelu")

    # ------------------------------------------------------------------ the maps
    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``(x − b_dec) W_enc + b_enc``."""
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents from pre-activations (inference rule of the kind)."""
        kind = self.cfg.kind
        if kind == "topk":
            vals, idx = z.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, idx, vals.relu())
        if kind == "relu":
            return z.relu()
        return z.relu() * (z > self.threshold).to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of activations ``[..., d_in]``."""
        if x.shape[-1] != self.cfg.d_in:
            raise InputError(f"the SAE reads {self.cfg.d_in}-wide activations but got "
                             f"{x.shape[-1]}; use an SAE trained on this site")
        return self.activate(self.pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f W_dec + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).to(x.dtype)

    # ------------------------------------------------------------------ constraints
    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows (the decoder-norm constraint)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the part of ``W_dec``'s gradient along its rows (keeps unit norm)."""
        g = self.W_dec.grad
        if g is not None:
            w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            g.sub_((g * w).sum(-1, keepdim=True) * w)

    @torch.no_grad()
    def fold_scale(self, c: float) -> None:
        """Make an SAE trained on ``c · x`` act on raw ``x``."""
        self.W_enc.mul_(c)
        self.b_dec.div_(c)
        self.W_dec.div_(c)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens format) atomically."""
        folder = Path(folder)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in (
            ("W_enc", self.W_enc), ("b_enc", self.b_enc), ("W_dec", self.W_dec),
            ("b_dec", self.b_dec))}
        if _ARCH[self.cfg.kind] == "jumprelu":
            tensors["threshold"] = self.threshold.detach().float().contiguous().cpu()
        with io.atomic_folder(folder) as tmp:
            save_file(tensors, str(Path(tmp) / WEIGHTS_FILE))
            (Path(tmp) / CFG_FILE).write_text(json.dumps(self.saelens_cfg(), indent=1))
        return folder

    def saelens_cfg(self) -> dict[str, Any]:
        """The ``cfg.json`` SAELens 6 reads."""
        c = self.cfg
        meta = {**c.meta, "lmxray_kind": c.kind, "lmxray_site": c.site, "model_name": c.model,
                "hook_name": c.site}
        cfg: dict[str, Any] = {
            "d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "metadata": meta, "architecture": _ARCH[c.kind],
        }
        if c.kind == "topk":
            cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
        return cfg


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CFG_FILE
    if not path.is_file():
        raise FormatError(f"{folder} holds no {CFG_FILE}; an SAE folder has {CFG_FILE} and "
                          f"{WEIGHTS_FILE} (SAELens format)")
    cfg = io.read_json(path, what="SAE config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("d_in"), int) \
            or not isinstance(cfg.get("d_sae"), int):
        raise FormatError(f"{path} is not an SAE config: it needs integer d_in and d_sae")
    return cfg


def _config_from(cfg: dict[str, Any], path: Path) -> SAEConfig:
    arch = cfg.get("architecture", "standard")
    meta = dict(cfg.get("metadata") or {})
    kind = meta.pop("lmxray_kind", None) or _KIND.get(arch)
    if kind is None or _ARCH.get(kind) != arch:
        raise FormatError(f"{path}: SAE architecture {arch!r} is not supported; lmxray reads "
                          "standard, topk and jumprelu SAEs")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise FormatError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is "
                          "not supported; fold the scaling into the weights (SAELens: "
                          "fold_activation_norm_scaling_factor) and save again")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise FormatError(f"{path}: rescale_acts_by_decoder_norm=true is not supported")
    site = meta.pop("lmxray_site", "") or ""
    model = meta.pop("model_name", "") or ""
    meta.pop("hook_name", None)
    k = int(cfg.get("k", 32) or 32) if kind in ("topk", "batchtopk") else 32
    try:
        return SAEConfig(cfg["d_in"], cfg["d_sae"], kind, min(k, cfg["d_sae"]), site, model, meta)
    except InputError as exc:
        raise FormatError(f"{path}: {exc}") from None


def load_sae(folder: str | os.PathLike[str], device: str | torch.device | None = None) -> SAE:
    """Read an SAE folder (lmxray's or SAELens'). Corrupt or mismatched files raise
    :class:`~lmxray.errors.FormatError` with one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"SAE folder {folder} does not exist; give a folder written by "
                         "`lmxray sae train` or SAELens")
    cfg = _config_from(_read_cfg(folder), folder / CFG_FILE)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FormatError(f"{folder} holds no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise FormatError(f"cannot read {path} as safetensors ({type(exc).__name__}); "
                          "the file is corrupt: retrain or copy it again") from None
    sae = SAE(cfg)
    _assign(sae, tensors, path)
    return sae.to(device) if device is not None else sae


def _assign(sae: SAE, tensors: dict[str, torch.Tensor], path: Path) -> None:
    d, n = sae.cfg.d_in, sae.cfg.d_sae
    shapes = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,)}
    if _ARCH[sae.cfg.kind] == "jumprelu":
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors["log_threshold"].exp()
        shapes["threshold"] = (n,)
    for key, shape in shapes.items():
        t = tensors.get(key)
        if t is None or tuple(t.shape) != shape:
            got = "missing" if t is None else f"shaped {tuple(t.shape)}"
            raise FormatError(f"{path}: {key} is {got}, expected {shape} for d_in={d}, d_sae={n}")
        if not bool(torch.isfinite(t).all()):
            raise FormatError(f"{path}: {key} holds NaN or inf; the weights are corrupt")
    with torch.no_grad():
        for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, key).copy_(tensors[key].float())
        if "threshold" in shapes:
            sae.log_threshold.copy_(tensors["threshold"].float().clamp_min(1e-30).log())
