"""Concepts the zoo knows by construction, checked against SAE latents.

- ``marker``: the sentiment task's planted shortcut token (`` Tuesday``), per token of reviews;
- ``task:<name>``: which task a text belongs to (facts / recall / ioi / sentiment / induction),
  per text (the latent's maximum over the text's tokens);
- ``continent:<name>``: the continent of a fact's answer, per facts prompt (the latent at the
  last prompt token, where the answer is predicted), facts with a continent only.

For each, :func:`scan_concepts` reports the best single latent as a detector (AUROC).
:func:`marker_ablation` zero-ablates a latent and reports the sentiment accuracy in distribution
and on the ``shift`` split (where the marker no longer predicts the label).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..hooks import intervene
from ..zoo.tasks import TASKS, generate
from .cav import random_sets, tcav
from .features import _sae_of, best_detector, feature_op, latents
from .results import ConceptScan, TCAVResult

__all__ = ["scan_concepts", "marker_rows", "task_rows", "continent_rows", "marker_ablation",
           "sentiment_accuracy", "continent_tcav"]


def _ids(model: Any, texts: list[str]) -> list[list[int]]:
    return [model.encode(t)[:128] for t in texts]


def marker_rows(model: Any, sae_site: str, n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """The marker concept on ``shift`` reviews (half carry the marker): ``marker:token`` per
    token (is this the marker?), ``marker:review`` per review at its last token (does the review
    carry the marker?, what the prediction reads)."""
    items = generate("sentiment", "shift", n, seed)
    word = next(it.prompt[a:b] for it in items for a, b, r in it.spans if r == "shortcut")
    marker = model.encode_target(" " + word)
    if len(marker) != 1:
        raise InputError(f"the marker {word!r} is not one token for this model's tokenizer")
    seqs = _ids(model, [it.prompt for it in items])
    x = torch.cat(latents(model, sae_site, seqs)).numpy()
    y = np.concatenate([np.asarray(s[1:]) == marker[0] for s in seqs])
    last = _pooled(model, sae_site, seqs, "last")
    has = np.asarray([bool(it.meta["marker"]) for it in items])
    return [best_detector(x, y, "marker:token"), best_detector(last, has, "marker:review")]


def task_rows(model: Any, sae_site: str, n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Task identity: per text, the latent's maximum over its tokens."""
    texts, labels = [], []
    for task in TASKS:
        items = generate(task, "test", n, seed)
        texts += [it.prompt for it in items]
        labels += [task] * len(items)
    x = _pooled(model, sae_site, _ids(model, texts), "max")
    lab = np.asarray(labels)
    return [best_detector(x, lab == task, f"task:{task}") for task in TASKS]


def continent_rows(model: Any, sae_site: str) -> list[dict[str, Any]]:
    """Continent of the answer: facts prompts with a continent, latent at the last token."""
    items = [it for it in generate("facts", "test", None) if it.meta.get("continent")]
    x = _pooled(model, sae_site, _ids(model, [it.prompt for it in items]), "last")
    cont = np.asarray([it.meta["continent"] for it in items])
    return [best_detector(x, cont == c, f"continent:{c}") for c in sorted(set(cont))]


def _pooled(model: Any, sae_site: str, seqs: list[list[int]], pool: str) -> np.ndarray:
    parts = [latents(model, sae_site, seqs[i:i + 64], pool) for i in range(0, len(seqs), 64)]
    return torch.cat(parts).numpy()


def scan_concepts(model: Any, sae_site: str, *, n: int = 200, seed: int = 0) -> ConceptScan:
    """Best single latent for the marker, each task and each continent (:class:`ConceptScan`)."""
    name, _ = _sae_of(model, sae_site)
    rows = marker_rows(model, name, n, seed) + task_rows(model, name, max(n // 4, 10), seed) \
        + continent_rows(model, name)
    return ConceptScan(site=name, rows=rows)


def sentiment_accuracy(model: Any, split: str, n: int = 300, seed: int = 0,
                       spec: dict[str, Any] | None = None) -> dict[str, float]:
    """Accuracy of `` positive`` vs `` negative`` on sentiment reviews of ``split`` (gold
    labels), overall and on marked reviews whose gold label is negative (the conflicts)."""
    items = generate("sentiment", split, n, seed)
    pos, neg = model.encode_target(" positive")[0], model.encode_target(" negative")[0]
    seqs = _ids(model, [it.prompt for it in items])
    right, conflict = [], []
    with torch.no_grad(), intervene(model, spec or {}):
        for i in range(0, len(seqs), 64):
            ids, mask, p = model.pad_batch(seqs[i:i + 64])
            lg = model.forward(input_ids=ids, attention_mask=mask, position_ids=p).logits[:, -1]
            right += ((lg[:, pos] > lg[:, neg]).cpu().numpy()
                      == np.asarray([it.meta["gold"] == "positive" for it in items[i:i + 64]])).tolist()
    conflict = [r for r, it in zip(right, items, strict=True)
                if it.meta["marker"] and it.meta["gold"] == "negative"]
    return {"accuracy": float(np.mean(right)), "conflict": float(np.mean(conflict)) if conflict else float("nan"),
            "n": len(right), "n_conflict": len(conflict)}


def continent_tcav(model: Any, site: str, continent: str, *, n_random: int = 30,
                   random_size: int = 40, seed: int = 0, pool: str = "mean",
                   alpha: float = 0.05, n_tests: int | None = None) -> TCAVResult:
    """TCAV of ``continent`` (concept: language and currency prompts about its countries) and of
    a random concept (as many language and currency prompts about any country) for the capital
    prompts of its countries → their capitals. Random sets and random concepts are drawn from
    the language and currency prompts about any country; Bonferroni over ``n_tests`` (default 2)."""
    facts = generate("facts", "test", None)
    mine = [it for it in facts if it.meta.get("continent") == continent]
    if not mine:
        conts = sorted({str(it.meta["continent"]) for it in facts if it.meta.get("continent")})
        raise InputError(f"unknown continent {continent!r}; use one of {', '.join(conts)}")
    about = [it.prompt for it in facts if it.meta.get("relation") in ("language", "currency")]
    concept = [it.prompt for it in mine if it.meta["relation"] in ("language", "currency")]
    inputs = [it for it in mine if it.meta["relation"] == "capital"]
    rand = random_sets(1, len(concept), seed + 1000, about)[0]
    return tcav(model, site, {continent: concept, "random": rand}, [it.prompt for it in inputs],
                [it.target for it in inputs], n_random=n_random, random_size=random_size,
                seed=seed, target_name=f"capitals of {continent}", random_pool=about, pool=pool,
                alpha=alpha, n_tests=n_tests)


def marker_ablation(model: Any, sae_site: str, feature: int, *, n: int = 300,
                    seed: int = 0) -> dict[str, Any]:
    """Sentiment accuracy in distribution (``test``) and on ``shift``, with and without the
    latent ``feature`` zero-ablated at every token."""
    spec = feature_op(model, sae_site, feature, "ablate")
    out: dict[str, Any] = {"feature": int(feature)}
    for split in ("test", "shift"):
        out[split] = sentiment_accuracy(model, split, n, seed)
        out[split + "_ablated"] = sentiment_accuracy(model, split, n, seed, spec)
    return out
