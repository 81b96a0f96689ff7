"""The result types of :mod:`lmxray.improve`, on the shared :class:`lmxray.result.Result` base.

Each is versioned JSON (``save`` / ``load``; loading never executes code) except
:class:`SteeringVector`, a ``.safetensors`` file with JSON metadata. Their views (``table()``,
``show()``, ``to_png()``) live in :mod:`lmxray.render.improve`. This module needs only numpy, so
the views can import it without loading a model stack.

Formats (unchanged from the first versions; files written by earlier lmxray load):
``lmxray.shortcuts/1``, ``lmxray.finetune/1``, ``lmxray.rrr/1``, ``lmxray.steering/1``
(safetensors), ``lmxray.steering-sweep/1``, ``lmxray.edits/1``, ``lmxray.edit/1``,
``lmxray.amplify/1``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import FormatError, InputError
from ..io import from_jsonable, load_tensors, save_tensors
from ..result import Result

__all__ = [
    "ImproveResult",
    "ShortcutReport",
    "FinetuneConfig",
    "FinetuneResult",
    "RRRReport",
    "SteeringVector",
    "SteeringSweep",
    "EditReport",
    "EditResult",
    "AmplifyResult",
    "ATTRIBUTIONS",
    "CONDITIONS",
]

ATTRIBUTIONS = ("gradient", "ig", "occlusion")
CONDITIONS = ("zero-shot", "no rationale", "random rationale", "amplify")


class ImproveResult(Result):
    """Base of the improve results: JSON fields from the dataclass fields, and ``table()``,
    their fixed-width text view (what the CLI prints and the docs quote).

    ``to_dict`` writes ``format`` then every field (a dataclass value as a dict), under the
    name in ``JSON_KEYS`` (``model_name`` is ``"model"``), except those in ``NOT_SAVED``;
    ``from_dict`` reads them back (a missing key takes the field's default; the fields in
    ``ARRAYS`` become float32 arrays with NaN for ``null``). Subclasses adjust what differs.
    """

    JSON_KEYS: ClassVar[dict[str, str]] = {"model_name": "model"}
    NOT_SAVED: ClassVar[tuple[str, ...]] = ()
    ARRAYS: ClassVar[tuple[str, ...]] = ()

    def table(self, *args: Any, **kwargs: Any) -> str:
        """The fixed-width text table (see :mod:`lmxray.render.improve`); arguments go to the
        view (e.g. ``report.table(5)``: the top 5 shortcut candidates)."""
        return self._view("text")(self, *args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.FORMAT}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in self.NOT_SAVED:
                v = getattr(self, f.name)
                d[self.JSON_KEYS.get(f.name, f.name)] = (
                    dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                )
        return d

    @classmethod
    def _fields_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from a JSON dict (see the class docstring)."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in cls.NOT_SAVED:
                continue
            key = cls.JSON_KEYS.get(f.name, f.name)
            if key in d:
                kw[f.name] = from_jsonable(d[key]) if f.name in cls.ARRAYS else d[key]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(key)
        return kw

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**cls._fields_from(d))


def _nan(v: Any) -> float:
    """A float written as JSON (``null`` for NaN)."""
    return float("nan") if v is None else float(v)


# --------------------------------------------------------------------------- shortcuts


@dataclass
class ShortcutReport(ImproveResult):
    """Tokens ranked by how much they look like a shortcut.

    Attributes:
        rows: one dict per candidate token, best first: ``token``, ``id``, ``count``
            (examples containing it), ``attr`` (mean relative attribution, 1 = average token),
            ``signed`` (mean signed share: > 0 supports the labelled answer), ``rationale``
            (fraction inside rationales), ``assoc`` (label association), ``label`` (the label it
            predicts), ``p_label`` (P(label | token)), ``score``.
        excluded: tokens left out as rationale tokens (same fields), by attribution.
        n_examples, method, labels (label counts), has_rationales.
    """

    FORMAT: ClassVar[str] = "lmxray.shortcuts/1"

    rows: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    n_examples: int
    method: str
    labels: dict[str, int]
    has_rationales: bool
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 1) -> list[str]:
        """The ``k`` best candidate tokens (as text, stripped), e.g. for ``finetune(irrelevant=...)``."""
        return [str(r["token"]).strip() for r in self.rows[:k]]


# --------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (a checkpoint resumes only with equal settings).

    Attributes:
        steps: optimiser steps. batch_size: examples per step (sampled with replacement,
            a function of ``(seed, step)``).
        lr / weight_decay / grad_clip: AdamW settings and gradient-norm clipping.
        lam: RRR penalty weight λ (0: plain fine-tuning).
        attribution: ``"gradient"`` (Ross et al.'s input gradient), ``"ig"`` (integrated
            gradients from ``baseline`` along a random path point per example) or
            ``"occlusion"`` (the exact effect of replacing the marked tokens by ``baseline``,
            or of deleting them with ``baseline="remove"``; see
            :func:`lmxray.improve.regularise.occlusion_penalty`).
        baseline: IG / occlusion baseline: ``"sample"`` (default; expected gradients: per example and step a
            random token of the training prompts that is not marked, so that the marked token
            must act like an ordinary one), or a fixed token: ``"auto"``, ``"zero"``, ``"pad"``,
            ``"unk"``, ``"eos"`` or an id. A fixed baseline can be gamed: the network is free to
            make the baseline behave like the shortcut.
        ig_samples: path points (and sampled baselines) per example and step.
        seed: batch sampling (and path point) seed.
    """

    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lam: float = 0.0
    attribution: str = "gradient"
    baseline: str | int = "sample"
    ig_samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "ig_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr!r}")
        if self.lam < 0:
            raise InputError(f"lam (the penalty weight) must be >= 0, got {self.lam!r}")
        if self.attribution not in ATTRIBUTIONS:
            raise InputError(
                f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {self.attribution!r}"
            )
        if self.baseline == "remove" and self.attribution != "occlusion":
            raise InputError("baseline 'remove' (deletion) is for attribution='occlusion' only")


@dataclass
class FinetuneResult(ImproveResult):
    """A fine-tuned copy and how it was trained (``finetune.json`` beside the saved model).

    Attributes:
        model: the fine-tuned :class:`~lmxray.model.Model` (a copy; the input model is
            unchanged); None when read back from ``finetune.json`` (load the folder with
            ``lmxray.load(path)``).
        config: the :class:`FinetuneConfig`.
        history: rows ``{"step", "ce", "penalty"}`` logged during training.
        classes: the candidate answers whose summed log-probability the penalty differentiates.
        path: where it was saved (HF format), or None.
        model_name: the fine-tuned model's name (from ``model`` when there is one).
    """

    FORMAT: ClassVar[str] = "lmxray.finetune/1"

    model: Any
    config: FinetuneConfig
    history: list[dict[str, float]]
    classes: list[str]
    n_examples: int
    n_marked: int
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""

    NOT_SAVED: ClassVar[tuple[str, ...]] = ("model", "path")

    def __post_init__(self) -> None:
        if self.model is not None and not self.model_name:
            self.model_name = str(getattr(self.model, "name", ""))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneResult:
        kw = cls._fields_from(d)
        return cls(model=None, **{**kw, "config": FinetuneConfig(**kw["config"])})


@dataclass
class RRRReport(ImproveResult):
    """Accuracy before and after plain and RRR fine-tuning.

    Attributes:
        rows: model name → ``{"in-distribution", "shift", "shift conflict", "n_*"}`` accuracies.
        shortcut_label: the label the marked tokens predict in training.
        penalised: the words / annotation penalised. paths: where the models were saved.
    """

    FORMAT: ClassVar[str] = "lmxray.rrr/1"

    rows: dict[str, dict[str, float]]
    shortcut_label: str
    penalised: list[str]
    config: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- steering


def _flag(v: Any) -> bool:
    """A boolean of metadata: JSON ``true`` now, the text ``"True"`` in files of lmxray <= 0.x."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v in ("True", "False"):
        return v == "True"
    raise FormatError(f"cannot read the flag {v!r}")


@dataclass
class SteeringVector(ImproveResult):
    """A direction in the residual stream, and where it applies (saved as ``.safetensors``).

    Attributes:
        vector: ``[d_model]`` float32.
        layer: block index; site: ``resid_pre`` (the input of block ``layer``, as ActAdd) or
            ``resid_post``.
        n_pos / n_neg: prompts in each set. norm: ``‖vector‖``. resid_norm: mean norm of the
            activations it was read from (for scale: ``coef * norm / resid_norm``).
        projected: whether the mean-activation direction was projected out.
    """

    FORMAT: ClassVar[str] = "lmxray.steering/1"

    vector: np.ndarray
    layer: int
    site: str = "resid_pre"
    n_pos: int = 0
    n_neg: int = 0
    resid_norm: float = 0.0
    projected: bool = False
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    ARRAYS: ClassVar[tuple[str, ...]] = ("vector",)

    @property
    def site_name(self) -> str:
        return f"layers.{self.layer}.{self.site}"

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.safetensors`` (the vector + JSON metadata) atomically."""
        import torch

        meta = {k: v for k, v in self.to_dict().items() if k not in ("format", "vector")}
        vec = torch.as_tensor(np.asarray(self.vector, dtype=np.float32))
        return save_tensors(path, {"vector": vec}, format=self.FORMAT, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a file written by :meth:`save` (also by earlier lmxray, whose metadata values
        were plain strings)."""
        tensors, meta = load_tensors(path, formats=cls.formats(), what="steering vector")
        try:
            return cls(
                vector=tensors["vector"].float().numpy(),
                layer=int(meta["layer"]),
                site=str(meta["site"]),
                n_pos=int(meta["n_pos"]),
                n_neg=int(meta["n_neg"]),
                resid_norm=float(meta["resid_norm"]),
                projected=_flag(meta["projected"]),
                model_name=str(meta.get("model", "")),
                info=dict(meta.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path} is a malformed {cls.FORMAT} file: {exc!r}") from None


@dataclass
class SteeringSweep(ImproveResult):
    """Flip rates and fluency per (layer, coefficient).

    Attributes:
        layers / coefs: the grid.
        flip: ``[n_layers, n_coefs]`` fraction of eligible prompts (unsteered answer = the other
            label) whose steered answer is the steered label.
        to_label / from_label: the steered label and the one it steers away from.
        loss: ``[n_layers, n_coefs]`` mean next-token loss on the fluency texts while steered;
            loss_unsteered: the same without steering.
        n_eligible: prompts counted in ``flip``.
    """

    FORMAT: ClassVar[str] = "lmxray.steering-sweep/1"

    layers: list[int]
    coefs: list[float]
    flip: np.ndarray
    loss: np.ndarray
    loss_unsteered: float
    to_label: str
    from_label: str
    n_eligible: int
    n_fluency: int
    site: str = "resid_pre"
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    ARRAYS: ClassVar[tuple[str, ...]] = ("flip", "loss")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SteeringSweep:
        kw = cls._fields_from(d)
        return cls(**{**kw, "loss_unsteered": _nan(kw["loss_unsteered"])})


# --------------------------------------------------------------------------- editing


@dataclass
class EditReport(ImproveResult):
    """Before/after metrics of single edits at the located layer and at random layers.

    Attributes:
        layer: the located layer; aie: ``[n_layers]`` AIE per layer (last subject token).
        rows: per method (``"located"``, ``"random layer"``, ``"unedited"``), the metrics
            ``efficacy``, ``paraphrase``, ``specificity`` (fractions) and ``n``.
        edits: one row per edit (fact, new object, layers, per-edit results).
    """

    FORMAT: ClassVar[str] = "lmxray.edits/1"

    layer: int
    aie: list[float]
    rows: dict[str, dict[str, float]]
    edits: list[dict[str, Any]]
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditReport:
        kw = cls._fields_from(d)
        return cls(**{**kw, "aie": [_nan(v) for v in kw["aie"]]})


@dataclass
class EditResult(ImproveResult):
    """One ROME edit of a prompt (``lmxray edit PROMPT``): the greedy answer before and after."""

    FORMAT: ClassVar[str] = "lmxray.edit/1"

    prompt: str
    subject: str
    target: str
    layer: int
    before: str
    after: str
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- prompting


@dataclass
class AmplifyResult(ImproveResult):
    """Accuracy of each prompting condition on the same queries.

    Attributes:
        accuracy: condition → fraction of queries answered with the right label.
        n: queries. demos: the demonstrations (prompt, target, mcs, words, random words).
        labels: the candidate labels. example_prompt: the AMPLIFY prompt of the first query.
    """

    FORMAT: ClassVar[str] = "lmxray.amplify/1"

    accuracy: dict[str, float]
    n: int
    demos: list[dict[str, Any]]
    labels: list[str]
    example_prompt: str
    model_name: str = ""
    proxy_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    JSON_KEYS: ClassVar[dict[str, str]] = {"model_name": "model", "proxy_name": "proxy"}
