"""Steering vectors: contrastive activation addition (CAA, Rimsky/Panickssery et al. 2023,
arXiv 2312.06681; ActAdd, Turner et al. 2023, arXiv 2308.10248).

A steering vector is the mean difference of residual-stream activations between two prompt
sets that differ in the behaviour to steer (positive vs negative reviews), read at one layer and
one token position (the last, where the answer is predicted)::

    v_l = mean_{p ∈ P+} h_l(p)[-1] - mean_{p ∈ P-} h_l(p)[-1]

Optionally the component along the mean activation of both sets is projected out (the
"projected" variant: the shared direction carries no contrast but a large norm). At inference
``coef * v_l`` is added to the same site at every token position of every forward — the prompt
and each generated token — through the hook layer (:func:`lmxray.hooks.intervene`), so any
``Model`` call (forward, ``generate``, attribution) inside :func:`steer` is steered, and the
hook is removed afterwards even if the call raises.

:func:`steering_sweep` measures what the issue asks: for held-out prompts whose unsteered answer
is the *other* label, the fraction of greedy answers flipped to the steered label, per layer
and coefficient, alongside the fluency cost (mean next-token loss on held-out zoo text, with
and without steering).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FormatError, InputError
from ..hooks import add, intervene, prepare_inputs, run_with_cache
from ..internals._result import JsonResult, from_jsonable
from ..model import Model
from ..sites import site_map
from ._common import format_table

__all__ = [
    "SteeringVector",
    "SteeringSweep",
    "steering_vector",
    "steer",
    "steered_predictions",
    "lm_loss",
    "steering_sweep",
]

SITE_KINDS = ("resid_pre", "resid_post")


@dataclass
class SteeringVector:
    """A direction in the residual stream, and where it applies.

    Attributes:
        vector: ``[d_model]`` float32.
        layer: block index; site: ``resid_pre`` (the input of block ``layer``, as ActAdd) or
            ``resid_post``.
        n_pos / n_neg: prompts in each set. norm: ``‖vector‖``. resid_norm: mean norm of the
            activations it was read from (for scale: ``coef * norm / resid_norm``).
        projected: whether the mean-activation direction was projected out.
    """

    vector: np.ndarray
    layer: int
    site: str = "resid_pre"
    n_pos: int = 0
    n_neg: int = 0
    resid_norm: float = 0.0
    projected: bool = False
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def site_name(self) -> str:
        return f"layers.{self.layer}.{self.site}"

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.safetensors`` (the vector + JSON metadata) atomically."""
        import json

        from safetensors.torch import save_file

        path = Path(path)
        if not path.parent.is_dir():
            raise InputError(
                f"cannot write {path}: folder {path.parent} does not exist; create it first"
            )
        meta = {
            "format": "lmxray.steering/1",
            "layer": str(self.layer),
            "site": self.site,
            "n_pos": str(self.n_pos),
            "n_neg": str(self.n_neg),
            "resid_norm": repr(self.resid_norm),
            "projected": str(self.projected),
            "model": self.model_name,
            "info": json.dumps(self.info),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(
                {"vector": torch.as_tensor(self.vector).contiguous()}, str(tmp), metadata=meta
            )
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a file written by :meth:`save`."""
        import json

        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no steering vector at {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != "lmxray.steering/1":
                    raise FormatError(
                        f"{path} is not an lmxray steering vector (lmxray.steering/1)"
                    )
                vec = fh.get_tensor("vector").float().numpy()
        except FormatError:
            raise
        except Exception as exc:  # safetensors raises its own types
            raise FormatError(f"cannot read {path}: {exc}") from None
        return cls(
            vector=vec,
            layer=int(meta["layer"]),
            site=meta["site"],
            n_pos=int(meta["n_pos"]),
            n_neg=int(meta["n_neg"]),
            resid_norm=float(meta["resid_norm"]),
            projected=meta["projected"] == "True",
            model_name=meta.get("model", ""),
            info=json.loads(meta.get("info", "{}")),
        )


def _last_activations(
    model: Model, prompts: Sequence[str], site: str, batch_size: int
) -> torch.Tensor:
    """``[N, d]`` activations at ``site`` at each prompt's last token."""
    out = []
    for a in range(0, len(prompts), batch_size):
        cache = run_with_cache(model, list(prompts[a : a + batch_size]), cache=[site], logits=False)
        out.append(
            cache[site][:, -1].float().cpu()
        )  # left padding: the last column is the last token
    return torch.cat(out)


def steering_vector(
    model: Model,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    *,
    site: str = "resid_pre",
    project: bool = False,
    batch_size: int = 64,
) -> SteeringVector:
    """Mean-difference steering vector from two prompt sets (towards ``positive``).

    Args:
        model: the lmxray Model.
        positive / negative: prompts showing the behaviour to add / to remove.
        layer: block index (negative counts from the end).
        site: ``"resid_pre"`` (input of block ``layer``) or ``"resid_post"``.
        project: project out the direction of the mean activation of both sets.
        batch_size: prompts per forward.

    Returns:
        :class:`SteeringVector` (``vector`` ``[d_model]``).
    """
    if site not in SITE_KINDS:
        raise InputError(f"steer at one of {', '.join(SITE_KINDS)}, got {site!r}")
    if not positive or not negative:
        raise InputError("a steering vector needs prompts in both sets (positive and negative)")
    n_l = site_map(model).n_layers
    if not -n_l <= layer < n_l:
        raise InputError(f"layer {layer} is out of range; the model has {n_l} layers")
    layer = layer % n_l
    name = f"layers.{layer}.{site}"
    hp = _last_activations(model, positive, name, batch_size)
    hn = _last_activations(model, negative, name, batch_size)
    vec = hp.mean(0) - hn.mean(0)
    if project:
        mu = torch.cat([hp, hn]).mean(0)
        u = mu / mu.norm().clamp_min(1e-12)
        vec = vec - (vec @ u) * u
    resid = float(torch.cat([hp, hn]).norm(dim=-1).mean())
    return SteeringVector(
        vector=vec.numpy().astype(np.float32),
        layer=layer,
        site=site,
        n_pos=len(positive),
        n_neg=len(negative),
        resid_norm=resid,
        projected=project,
        model_name=model.name,
    )


@contextlib.contextmanager
def steer(
    model: Model,
    vector: SteeringVector,
    coef: float = 1.0,
    positions: int | Sequence[int] | None = None,
) -> Iterator[None]:
    """Inside the block, every forward of ``model`` has ``coef * vector`` added at its site.

    Args:
        positions: token positions to steer (see :mod:`lmxray.hooks`); None = every position of
            every call (the prompt and each generated token).

    Example:
        >>> with steer(m, v, coef=4.0):                          # doctest: +SKIP
        ...     print(m.generate("Review: the plot was dull. Sentiment:", 2))
    """
    if vector.vector.shape != (model.d_model,):
        raise InputError(
            f"the steering vector has shape {tuple(vector.vector.shape)} but the model's residual "
            f"stream has {model.d_model} dimensions; build the vector on this model"
        )
    value = torch.as_tensor(vector.vector, dtype=model.dtype, device=model.device)
    with intervene(model, {vector.site_name: add(value, positions=positions, coef=float(coef))}):
        yield


@torch.no_grad()
def steered_predictions(
    model: Model,
    prompts: Sequence[str],
    vector: SteeringVector | None = None,
    coef: float = 0.0,
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """``[N]`` greedy next-token ids after each prompt (the first generated token), steered."""
    out: list[int] = []
    ctx = (
        steer(model, vector, coef) if vector is not None and coef != 0 else contextlib.nullcontext()
    )
    with ctx:
        for a in range(0, len(prompts), batch_size):
            ids, mask, pos, _ = prepare_inputs(model, list(prompts[a : a + batch_size]))
            logits = model.forward(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
            ).logits
            out += logits[:, -1].argmax(-1).tolist()
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def lm_loss(
    model: Model,
    texts: Sequence[str],
    vector: SteeringVector | None = None,
    coef: float = 0.0,
    *,
    batch_size: int = 32,
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``texts``, steered when ``vector`` is given."""
    total, count = 0.0, 0
    ctx = (
        steer(model, vector, coef) if vector is not None and coef != 0 else contextlib.nullcontext()
    )
    with ctx:
        for a in range(0, len(texts), batch_size):
            ids, mask, pos, _ = prepare_inputs(model, list(texts[a : a + batch_size]))
            logits = (
                model.forward(input_ids=ids, attention_mask=mask, position_ids=pos)
                .logits[:, :-1]
                .float()
            )
            tgt = ids[:, 1:]
            valid = mask[:, 1:].bool() & mask[:, :-1].bool()
            ce = torch.nn.functional.cross_entropy(logits[valid], tgt[valid], reduction="sum")
            total += float(ce)
            count += int(valid.sum())
    if count == 0:
        raise InputError("the fluency texts hold no tokens to predict")
    return total / count


@dataclass
class SteeringSweep(JsonResult):
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

    FORMAT = "lmxray.steering-sweep/1"

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

    def table(self) -> str:
        head = ["layer", *[f"c={c:g}" for c in self.coefs]]
        rows = [
            [f"{ly} flip", *[float(v) for v in self.flip[i]]] for i, ly in enumerate(self.layers)
        ]
        rows += [
            [f"{ly} loss", *[float(v) for v in self.loss[i]]] for i, ly in enumerate(self.layers)
        ]
        title = (
            f"steering {self.from_label!r} -> {self.to_label!r} at {self.site}: fraction flipped "
            f"({self.n_eligible} prompts) and LM loss on {self.n_fluency} held-out texts "
            f"(unsteered {self.loss_unsteered:.3f} nats/token)"
        )
        return format_table(head, rows, title=title)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "model": self.model_name,
            "site": self.site,
            "layers": self.layers,
            "coefs": self.coefs,
            "flip": self.flip,
            "loss": self.loss,
            "loss_unsteered": self.loss_unsteered,
            "to_label": self.to_label,
            "from_label": self.from_label,
            "n_eligible": self.n_eligible,
            "n_fluency": self.n_fluency,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SteeringSweep:
        return cls(
            layers=[int(v) for v in d["layers"]],
            coefs=[float(v) for v in d["coefs"]],
            flip=from_jsonable(d["flip"]),
            loss=from_jsonable(d["loss"]),
            loss_unsteered=float(d["loss_unsteered"]),
            to_label=d["to_label"],
            from_label=d["from_label"],
            n_eligible=int(d["n_eligible"]),
            n_fluency=int(d["n_fluency"]),
            site=d.get("site", "resid_pre"),
            model_name=d.get("model", ""),
            info=d.get("info", {}),
        )

    def to_png(self, path: Any) -> Any:
        """Flip rate vs coefficient (one line per layer) and the fluency loss beside it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        try:
            for i, ly in enumerate(self.layers):
                a1.plot(self.coefs, self.flip[i], marker="o", label=f"layer {ly}")
                a2.plot(self.coefs, self.loss[i], marker="o", label=f"layer {ly}")
            a2.axhline(self.loss_unsteered, color="k", ls="--", lw=1, label="unsteered")
            a1.set_xlabel("coefficient")
            a1.set_ylabel(f"fraction flipped to {self.to_label.strip()!r}")
            a1.set_ylim(-0.02, 1.02)
            a2.set_xlabel("coefficient")
            a2.set_ylabel("LM loss on held-out text (nats/token)")
            a1.legend(fontsize=8)
            a2.legend(fontsize=8)
            fig.suptitle(
                f"steering {self.site}: {self.from_label.strip()} -> {self.to_label.strip()}"
            )
            fig.tight_layout()
            fig.savefig(path, format="png", dpi=110)
        finally:
            plt.close(fig)
        return path


def steering_sweep(
    model: Model,
    positive: Sequence[str],
    negative: Sequence[str],
    eval_prompts: Sequence[str],
    to_label: str,
    from_label: str,
    *,
    layers: Sequence[int] | None = None,
    coefs: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    fluency_texts: Sequence[str] = (),
    site: str = "resid_pre",
    project: bool = False,
    progress: bool = True,
) -> SteeringSweep:
    """Flip rate (towards ``to_label``) and fluency for every (layer, coefficient).

    Args:
        positive / negative: prompt sets of the vector (towards ``positive``).
        eval_prompts: held-out prompts; those whose unsteered greedy answer's first token is
            ``from_label``'s are the eligible ones.
        to_label / from_label: answers, e.g. ``" positive"`` / ``" negative"`` (first tokens compared).
        layers: default every layer. coefs: coefficients (0 is the unsteered baseline).
        fluency_texts: held-out text for the LM loss (e.g. ``lmxray.zoo.corpus("test", 200)``).
    """
    from tqdm.auto import tqdm

    to_ids, from_ids = model.encode_target(to_label), model.encode_target(from_label)
    if not to_ids or not from_ids:
        raise InputError("the steered labels must tokenize to at least one token")
    n_l = site_map(model).n_layers
    layers = list(range(n_l)) if layers is None else [int(v) % n_l for v in layers]
    base = steered_predictions(model, eval_prompts)
    eligible = [p for p, t in zip(eval_prompts, base, strict=True) if int(t) == from_ids[0]]
    if not eligible:
        raise InputError(
            f"no evaluation prompt is answered {from_label!r} without steering; nothing to flip"
        )
    texts = list(fluency_texts)
    loss0 = lm_loss(model, texts) if texts else float("nan")
    flip = np.zeros((len(layers), len(coefs)), dtype=np.float32)
    loss = np.full((len(layers), len(coefs)), np.nan, dtype=np.float32)
    vectors = {}
    bar = tqdm(total=len(layers) * len(coefs), desc="steering sweep", disable=not progress)
    try:
        for i, ly in enumerate(layers):
            v = steering_vector(model, positive, negative, ly, site=site, project=project)
            vectors[ly] = v.norm
            for j, c in enumerate(coefs):
                pred = steered_predictions(model, eligible, v, float(c))
                flip[i, j] = float(np.mean(pred == to_ids[0]))
                if texts:
                    loss[i, j] = lm_loss(model, texts, v, float(c)) if c != 0 else loss0
                bar.update(1)
    finally:
        bar.close()
    return SteeringSweep(
        layers=layers,
        coefs=[float(c) for c in coefs],
        flip=flip,
        loss=loss,
        loss_unsteered=loss0,
        to_label=to_label,
        from_label=from_label,
        n_eligible=len(eligible),
        n_fluency=len(texts),
        site=site,
        model_name=model.name,
        info={
            "n_pos": len(positive),
            "n_neg": len(negative),
            "project": project,
            "vector_norms": {str(k): round(v, 4) for k, v in vectors.items()},
        },
    )
