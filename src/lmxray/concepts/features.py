"""Using SAE latents: detectors of known concepts, attribution to and from latents, the feature
view.

The latents of an attached SAE are the site ``<site>.sae`` (:func:`lmxray.concepts.attach`):
``model.run(x, cache=["layers.2.resid_post.sae"])`` reads them, and ``model.intervene`` ablates,
clamps or steers them (``{"layers.2.resid_post.sae": zero()}`` on all latents; use
:func:`feature_op` for one latent). Edits keep the SAE's reconstruction error.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..attribution import attribute
from ..errors import InputError
from ..hooks import Fn, capture, intervene
from ..result import Attribution
from ..sites import ATTACH_SUFFIX, site_map
from ..targets import resolve_target_fn
from .data import site_forward, text_stream
from .results import FeatureView
from .sae import SAE

__all__ = ["feature_op", "latents", "auroc_per_feature", "best_detector", "feature_attribution",
           "attribute_feature", "feature_view", "logit_effects"]


def _sae_of(model: Any, sae_site: str) -> tuple[str, SAE]:
    sm = site_map(model)
    if not sae_site.endswith(ATTACH_SUFFIX):
        sae_site = sae_site + ATTACH_SUFFIX
    s = sm[sae_site]
    return s.name, s.attach


def _check_feature(sae: SAE, feature: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int | np.integer) \
            or not 0 <= int(feature) < sae.cfg.d_sae:
        raise InputError(f"feature {feature!r} is out of range; the SAE has {sae.cfg.d_sae} "
                         f"latents (0..{sae.cfg.d_sae - 1})")
    return int(feature)


def feature_op(model: Any, sae_site: str, feature: int, how: str = "ablate",
               value: float = 0.0) -> dict[str, Any]:
    """An intervention spec on one latent: ``ablate`` (0), ``clamp`` (set to ``value`` where
    it fires... everywhere), ``scale`` (multiply by ``value``) or ``steer`` (add ``value``)."""
    name, sae = _sae_of(model, sae_site)
    j = _check_feature(sae, feature)
    if how not in ("ablate", "clamp", "scale", "steer"):
        raise InputError(f"unknown feature edit {how!r}; use ablate, clamp, scale or steer")

    def edit(f: torch.Tensor) -> torch.Tensor:
        f = f.clone()
        if how == "ablate":
            f[..., j] = 0
        elif how == "clamp":
            f[..., j] = value
        elif how == "scale":
            f[..., j] = f[..., j] * value
        else:
            f[..., j] = f[..., j] + value
        return f

    return {name: Fn(fn=edit)}


def latents(model: Any, sae_site: str, seqs: list[list[int]], pool: str = "tokens") -> Any:
    """Latent activations of token-id lists: ``pool="tokens"`` -> list of ``[L_i, d_sae]``
    (BOS excluded), ``"max"``/``"mean"`` -> ``[B, d_sae]``, ``"last"`` -> last token's."""
    name, sae = _sae_of(model, sae_site)
    acts, mask = site_forward(model, name[: -len(ATTACH_SUFFIX)], seqs)
    with torch.no_grad():
        f = sae.encode(acts).float().cpu()
    mask = mask.bool().cpu()
    rows = [f[i][mask[i]][1:] for i in range(len(seqs))]
    if pool == "tokens":
        return rows
    if pool == "last":
        return f[:, -1]
    if pool in ("max", "mean"):
        return torch.stack([r.max(0).values if pool == "max" else r.mean(0) for r in rows])
    raise InputError(f"unknown pooling {pool!r}; use tokens, last, max or mean")


def auroc_per_feature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``x`` ``[N, F]`` as a detector of the boolean labels ``y``."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("a concept needs positive and negative examples")
    ranks = rankdata(x, axis=0)
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def best_detector(x: np.ndarray, y: np.ndarray, concept: str) -> dict[str, Any]:
    """The latent with the highest AUROC for ``y`` (a row of :class:`ConceptScan`)."""
    auc = auroc_per_feature(np.asarray(x, dtype=np.float64), y)
    j = int(np.argmax(auc))
    return {"concept": concept, "feature": j, "auroc": float(auc[j]),
            "positives": int(np.sum(y)), "negatives": int(np.size(y) - np.sum(y))}


# --------------------------------------------------------------------------- attribution
def feature_attribution(model: Any, sae_site: str, prompt: str, target: str, *,
                        method: str = "atp", steps: int = 16,
                        target_fn: Any = None) -> torch.Tensor:
    """Attribution of ``target_fn(target | prompt)`` (first target token) to every latent at
    every prompt position, ``[L, d_sae]``; the SAE error is held at its clean value.

    ``method="atp"``: attribution patching to zero, ``∂m/∂f · f`` (Marks et al. 2024);
    ``"ig"``: integrated gradients on the latents from 0 (``steps`` midpoints), which sums to
    ``m(clean) − m(latents zeroed)``.
    """
    if method not in ("atp", "ig"):
        raise InputError(f"unknown feature attribution {method!r}; use atp or ig")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    name, _ = _sae_of(model, sae_site)
    fn = resolve_target_fn(target_fn)
    ids = model.encode(prompt)
    tgt = model.encode_target(target)
    if not tgt:
        raise InputError("the target is empty; give at least one token")
    alphas = [1.0] if method == "atp" else [(k + 0.5) / steps for k in range(steps)]
    total = None
    for a in alphas:
        with capture(model, [name], grad=True,
                     interventions={name: Fn(fn=lambda f, a=a: f * a)}) as store, torch.enable_grad():
            logits = model.forward(input_ids=torch.tensor([ids], device=model.device)).logits
            m = fn(logits[0, -1], torch.tensor(tgt[0], device=logits.device))
            f = store[name]
            (g,) = torch.autograd.grad(m.sum(), f)
        total = g[0] if total is None else total + g[0]
    f_clean = f[0].detach() / alphas[-1]
    return (total / len(alphas) * f_clean).detach().cpu()  # type: ignore[operator]


def attribute_feature(model: Any, sae_site: str, feature: int, prompt: str, *,
                      method: str = "integrated_gradients", **params: Any) -> Attribution:
    """Attribute latent ``feature``'s activation at the prompt's last token to the prompt's
    tokens with any registered method: the latent is exposed to the method as the target
    function's value (every logit of the forward is set to it; ``target_fn="logit"``)."""
    name, sae = _sae_of(model, sae_site)
    j = _check_feature(sae, feature)
    box: dict[str, torch.Tensor] = {}

    def stash(f: torch.Tensor) -> None:
        box["f"] = f[..., j]

    def expose(logits: torch.Tensor) -> torch.Tensor:
        f = box["f"][:, -logits.shape[1]:]  # the method may keep only the last logits
        return f[..., None].to(logits.dtype).expand_as(logits)

    with intervene(model, {name: Fn(fn=stash), "logits": Fn(fn=expose)}):
        res = attribute(model, prompt, method=method, max_new_tokens=1, target_fn="logit", **params)
    assert isinstance(res, Attribution)
    res.info["explains"] = f"latent {j} of {name} at the last prompt token"
    return res


# --------------------------------------------------------------------------- the view
def logit_effects(model: Any, sae: SAE, feature: int, n: int = 10) -> tuple[list[list[Any]], list[list[Any]]]:
    """Tokens the decoder row promotes / suppresses most, read through the final norm's gain
    and the unembedding (residual sites only; empty otherwise)."""
    sm = site_map(model)
    head = model.hf.get_output_embeddings()
    if head is None or head.weight.shape[1] != sae.cfg.d_in:
        return [], []
    d = sae.W_dec[feature].detach()
    gain = getattr(sm.final_norm, "weight", None)
    if isinstance(gain, torch.Tensor) and gain.shape == d.shape:
        d = d * gain.detach()
    eff = (head.weight.detach() @ d).float().cpu()
    top = eff.topk(n)
    bot = (-eff).topk(n)

    def rows(idx: torch.Tensor, vals: torch.Tensor) -> list[list[Any]]:
        toks = model.token_strings(idx.tolist())
        return [[t, round(float(v), 4)] for t, v in zip(toks, vals, strict=True)]

    return rows(top.indices, top.values), rows(bot.indices, -bot.values)


def feature_view(model: Any, sae_site: str, feature: int, *, corpus: Any = None,
                 n_texts: int = 500, top: int = 10, window: int = 8, bins: int = 20) -> FeatureView:
    """Top-activating contexts (over ``n_texts`` of ``corpus``), activation histogram and logit
    effects of one latent."""
    name, sae = _sae_of(model, sae_site)
    j = _check_feature(sae, feature)
    if n_texts < 1 or top < 1:
        raise InputError("n_texts and top must be >= 1")
    texts = list(itertools.islice(text_stream(corpus), n_texts))
    heap: list[tuple[float, int, dict[str, Any]]] = []
    acts_all: list[torch.Tensor] = []
    total = 0
    for i in range(0, len(texts), 32):
        seqs = [model.encode(t)[:128] for t in texts[i:i + 32]]
        seqs = [s for s in seqs if len(s) > 1]
        for s, f in zip(seqs, latents(model, name, seqs), strict=True):
            a = f[:, j]
            total += len(a)
            acts_all.append(a[a > 0])
            if len(a) and float(a.max()) > 0:
                _push(heap, top, model, s[1:], a, window, len(heap) + total)
    nz = torch.cat(acts_all) if acts_all else torch.zeros(0)
    counts, edges = np.histogram(nz.numpy(), bins=bins) if len(nz) else (np.zeros(0), np.zeros(0))
    promoted, suppressed = logit_effects(model, sae, j)
    return FeatureView(site=name, feature=j, contexts=[c for _, _, c in sorted(heap, reverse=True)],
                       hist_edges=[float(e) for e in edges], hist_counts=[int(c) for c in counts],
                       freq=len(nz) / max(total, 1), promoted=promoted, suppressed=suppressed)


def _push(heap: list[tuple[float, int, dict[str, Any]]], top: int, model: Any, ids: Sequence[int],
          a: torch.Tensor, window: int, tie: int) -> None:
    at = int(a.argmax())
    best = float(a[at])
    if len(heap) >= top and best <= heap[0][0]:
        return
    lo, hi = max(0, at - window), min(len(ids), at + window + 1)
    ctx = {"tokens": model.token_strings(list(ids[lo:hi])),
           "acts": [round(float(v), 4) for v in a[lo:hi]], "max": round(best, 4), "at": at - lo}
    item = (best, tie, ctx)
    if len(heap) < top:
        heapq.heappush(heap, item)
    else:
        heapq.heapreplace(heap, item)

