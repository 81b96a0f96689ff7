"""Sanity checks for explanations: model-parameter randomisation (Adebayo et al. 2018,
"Sanity Checks for Saliency Maps", arXiv:1810.03292).

An explanation that explains the *model* must change when the model's learned weights are
destroyed. Two tests, on a deep copy of the model (the user's model is never touched):

- **cascading**: re-draw the weights from the top down (language-model head, then decoder layers
  from last to first, then the embeddings and everything left), recomputing the explanation after
  each stage;
- **independent**: re-draw one stage at a time, the rest kept as trained.

Each tensor is re-drawn from a Gaussian with that tensor's own mean and standard deviation
(seeded), so activations keep their scale; constant tensors (norm gains, zero biases) keep their
value, as a re-initialisation would give them. After each stage the Spearman rank correlation
between the original and the new scores (every defined ``[t, s]`` cell) is averaged over the
examples, signed and on absolute values. A method **passes** when the correlation after the full
cascade is below ``threshold`` (default 0.5); a method whose scores do not depend on the weights
(the ``random`` control) fails.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from ..attribution.api import attribute
from ..attribution.randomise import randomisation_stages
from ..attribution.randomise import redraw as _redraw
from ..errors import InputError
from ..io import from_jsonable, to_jsonable
from ..model import Model
from ..result import Attribution, Result

__all__ = ["sanity_check", "SanityResult", "randomisation_stages", "rank_correlation"]


@dataclass(repr=False)
class SanityResult(Result):
    """Rank correlations between original and randomised explanations (``lmxray.sanity/1``:
    ``save`` / ``load``, ``show``).

    Attributes:
        method: the attribution method.
        mode: ``"cascading"`` or ``"independent"``.
        stages: stage names in the order applied (``lm_head``, ``layer.L-1``..., ``embeddings``).
        spearman: ``[n_stages]`` mean over examples of the Spearman correlation (signed scores).
        spearman_abs: ``[n_stages]`` the same on absolute scores.
        per_example: ``[n_stages, n_examples]`` signed correlations.
        threshold: pass threshold on the fully randomised correlation.
    """

    FORMAT: ClassVar[str] = "lmxray.sanity/1"

    method: str
    mode: str
    stages: list[str]
    spearman: np.ndarray
    spearman_abs: np.ndarray
    per_example: np.ndarray
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> float:
        """Correlation after the last stage (cascading: the whole model randomised)."""
        return float(self.spearman[-1])

    @property
    def passed(self) -> bool | None:
        """Cascading: ``|spearman|`` after the whole model is randomised is below ``threshold``.
        Independent randomisation is reported per layer, not judged (None)."""
        if self.mode != "cascading":
            return None
        return bool(np.isfinite(self.final) and abs(self.final) < self.threshold)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "info"}
        return to_jsonable({"format": self.FORMAT, **data, "passed": self.passed, "info": self.info})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SanityResult:
        arrays = {k: from_jsonable(data[k], np.float64) for k in ("spearman", "spearman_abs", "per_example")}
        return cls(method=data["method"], mode=data["mode"], stages=list(data["stages"]),
                   threshold=float(data["threshold"]), info=dict(data.get("info") or {}), **arrays)

    def __repr__(self) -> str:
        return f"SanityResult(method={self.method!r}, mode={self.mode!r}, passed={self.passed!r})"


def rank_correlation(a: Attribution, b: Attribution) -> tuple[float, float]:
    """Spearman correlation of the defined cells of two attributions (signed, absolute)."""
    from scipy.stats import spearmanr

    mask = a.valid_mask() & ~np.isnan(a.scores) & ~np.isnan(b.scores)
    x, y = a.scores[mask].astype(np.float64), b.scores[mask].astype(np.float64)
    if x.size < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signed = spearmanr(x, y).statistic
        absolute = spearmanr(np.abs(x), np.abs(y)).statistic
    return float(signed), float(absolute)


def _targets_for(model: Model, prompts: list[str], targets: Sequence[str] | None,
                 max_new_tokens: int) -> list[str]:
    if targets is not None:
        if len(targets) != len(prompts):
            raise InputError(f"got {len(prompts)} prompts but {len(targets)} targets")
        return list(targets)
    out = []
    for p in prompts:
        ids = model.generate_ids(model.encode(p), max_new_tokens)
        text = model.tokenizer.decode(ids)
        if not ids or model.encode_target(text) != ids:
            raise InputError(f"cannot fix a target for {p!r} by generation; pass targets=")
        out.append(text)
    return out


def sanity_check(
    model: Model,
    prompts: str | Sequence[str],
    targets: str | Sequence[str] | None = None,
    *,
    method: str = "integrated_gradients",
    mode: str = "cascading",
    threshold: float = 0.5,
    seed: int = 0,
    max_new_tokens: int = 1,
    **params: Any,
) -> SanityResult:
    """Adebayo et al.'s model-parameter randomisation test for one method.

    Args:
        model: the model (a deep copy is randomised; the model itself is not changed).
        prompts, targets: the examples (targets default to ``max_new_tokens`` greedy tokens).
        method: a registered attribution method; ``**params`` are its parameters.
        mode: ``"cascading"`` or ``"independent"``.
        threshold: pass if ``|spearman|`` after the full cascade is below it.
        seed: seed of the re-drawn weights.

    Returns:
        :class:`SanityResult` with one correlation per stage.

    Example:
        >>> r = sanity_check(m, ["The capital of France is"], [" Paris"], method="saliency")  # doctest: +SKIP
        >>> r.passed  # doctest: +SKIP
    """
    if mode not in ("cascading", "independent"):
        raise InputError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1], got {threshold!r}")
    plist = [prompts] if isinstance(prompts, str) else list(prompts)
    if not plist:
        raise InputError("no prompts to check")
    tlist = _targets_for(model, plist, [targets] if isinstance(targets, str) else targets,
                         max_new_tokens)
    original = attribute(model, plist, tlist, method=method, **params)
    assert isinstance(original, list)

    clone = copy.deepcopy(model.hf)
    clone.eval()
    twin = Model(clone, model.tokenizer, name=f"{model.name} (randomised)")
    stages = randomisation_stages(clone, model.n_layers)
    gen = torch.Generator().manual_seed(int(seed))
    per_example, per_abs, names = [], [], []
    for name, params_ in stages:
        saved = [p.detach().clone() for p in params_] if mode == "independent" else None
        _redraw(params_, gen)
        randomised = attribute(twin, plist, tlist, method=method, **params)
        assert isinstance(randomised, list)
        corr = [rank_correlation(a, b) for a, b in zip(original, randomised, strict=True)]
        per_example.append([c[0] for c in corr])
        per_abs.append([c[1] for c in corr])
        names.append(name)
        if saved is not None:
            with torch.no_grad():
                for p, s in zip(params_, saved, strict=True):
                    p.copy_(s)
    del clone, twin
    pe = np.array(per_example, dtype=np.float64)
    pa = np.array(per_abs, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return SanityResult(
            method=method, mode=mode, stages=names, spearman=np.nanmean(pe, axis=1),
            spearman_abs=np.nanmean(pa, axis=1), per_example=pe, threshold=threshold,
            info={"seed": seed, "n_examples": len(plist), "params": params,
                  "redraw": "gaussian with each tensor's mean and std"},
        )
