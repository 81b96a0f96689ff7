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
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..hooks import add, intervene, prepare_inputs, run_with_cache
from ..model import Model
from ..sites import site_map
from .results import SteeringSweep, SteeringVector

__all__ = [
    "SteeringVector",
    "SteeringSweep",
    "steering_vector",
    "steer",
    "steered_predictions",
    "lm_loss",
    "steering_sweep",
    "check_layers",
]

SITE_KINDS = ("resid_pre", "resid_post")


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


def check_layers(model: Model, layers: Sequence[int] | None) -> list[int]:
    """Block indices (negative counts from the end) as ``0..n_layers-1``; all when None.
    An index outside the model or an empty list is refused (never wrapped or dropped)."""
    n_l = site_map(model).n_layers
    if layers is None:
        return list(range(n_l))
    layers = [int(v) for v in layers]
    if not layers:
        raise InputError("no layers given; pass layer numbers, or none for every layer")
    bad = [v for v in layers if not -n_l <= v < n_l]
    if bad:
        raise InputError(
            f"layer {bad[0]} is out of range; the model has {n_l} layers (0 to {n_l - 1})"
        )
    return [v % n_l for v in layers]


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


def _steered_batches(
    model: Model,
    texts: Sequence[str],
    vector: SteeringVector | None,
    coef: float,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Left-padded ``(input_ids, attention_mask, position_ids)`` batches of ``texts``, each
    consumed while ``coef * vector`` steers the model (no steering without a vector or at 0)."""
    ctx = (
        steer(model, vector, coef) if vector is not None and coef != 0 else contextlib.nullcontext()
    )
    with ctx:
        for a in range(0, len(texts), batch_size):
            ids, mask, pos, _ = prepare_inputs(model, list(texts[a : a + batch_size]))
            yield ids, mask, pos


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
    for ids, mask, pos in _steered_batches(model, prompts, vector, coef, batch_size):
        logits = model.forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
        ).logits
        out += logits[:, -1].argmax(-1).tolist()
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def lm_loss(model: Model, texts: Sequence[str], vector: SteeringVector | None = None,
            coef: float = 0.0, *, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats/token) of ``texts``, steered when ``vector`` is given."""
    total, count = 0.0, 0
    for ids, mask, pos in _steered_batches(model, texts, vector, coef, batch_size):
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
    to_ids, from_ids = model.encode_target(to_label), model.encode_target(from_label)
    if not to_ids or not from_ids:
        raise InputError("the steered labels must tokenize to at least one token")
    if site not in SITE_KINDS:
        raise InputError(f"steer at one of {', '.join(SITE_KINDS)}, got {site!r}")
    layers = check_layers(model, layers)
    if not len(coefs):
        raise InputError("no steering coefficients given; pass e.g. coefs=(0, 1, 2, 4, 8)")
    if not eval_prompts:
        raise InputError("no evaluation prompts given; nothing to flip")
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
