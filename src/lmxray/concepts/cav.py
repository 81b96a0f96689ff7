"""Concept activation vectors and TCAV (Kim et al. 2018), with the test against random concepts.

- A *CAV* for concept C at a site: a linear classifier (logistic regression, 33% held out for its
  accuracy) separating the activations of C's example texts from those of a random text set;
  the vector is its unit-norm weight, signed toward C. Activations are pooled per text: the last
  token (``pool="last"``, default) or the mean over tokens (BOS excluded).
- The *TCAV score* of C for inputs with targets: the share of inputs whose directional derivative
  ``∇_h log p(target | x) · v_C`` is positive (``h``: the site, pooled the same way).
- *Significance*: CAVs of C against ``n_random`` random sets give ``n_random`` scores; CAVs of
  random set ``i − 1`` against random set ``i`` (a different random "concept" each run) give the
  null scores; a two-sided Welch t-test (``scipy.stats.ttest_ind``) at ``alpha`` decides. Insignificant concepts are reported as
  such, whatever their mean score.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import ttest_ind
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from ..errors import InputError
from ..hooks import capture
from ..sites import site_map
from ..zoo.tasks import corpus as zoo_corpus
from .data import site_forward
from .results import TCAVResult

__all__ = ["pooled_activations", "train_cav", "input_gradients", "tcav_score", "tcav",
           "random_sets"]

_POOLS = ("last", "mean")


def _pool(x: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "last":
        return x[:, -1]
    m = mask.bool().clone()
    m[torch.arange(len(m)), m.int().argmax(-1)] = False  # drop BOS
    w = m.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


def _seqs(model: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise InputError("a concept or input set needs non-empty texts")
    return [model.encode(t)[:128] for t in texts]


def pooled_activations(model: Any, site: str, texts: Sequence[str], pool: str = "last") -> np.ndarray:
    """``[N, d]`` pooled activations of ``texts`` at ``site``."""
    if pool not in _POOLS:
        raise InputError(f"unknown pooling {pool!r}; use last or mean")
    seqs = _seqs(model, texts)
    out = []
    for i in range(0, len(seqs), 64):
        acts, mask = site_forward(model, site, seqs[i:i + 64])
        out.append(_pool(acts.float(), mask, pool).cpu())
    return torch.cat(out).numpy()


def train_cav(concept: np.ndarray, rand: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Unit CAV (toward ``concept``) and the classifier's held-out accuracy."""
    n = min(len(concept), len(rand))
    if n < 3:
        raise InputError("a CAV needs at least 3 examples in the concept and the random set")
    x = np.concatenate([concept[:n], rand[:n]])
    y = np.r_[np.ones(n), np.zeros(n)]
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.33, random_state=seed, stratify=y)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((xtr - mu) / sd, ytr)
    acc = float(clf.score((xte - mu) / sd, yte))
    v = clf.coef_[0] / sd  # the direction in the raw activation space
    return v / (np.linalg.norm(v) + 1e-12), acc


def input_gradients(model: Any, site: str, prompts: Sequence[str], targets: Sequence[str],
                    pool: str = "last") -> np.ndarray:
    """``[N, d]``: gradient of ``log p(first target token)`` w.r.t. the pooled site activation."""
    if len(prompts) != len(targets):
        raise InputError(f"got {len(prompts)} inputs but {len(targets)} targets; give one each")
    name = site_map(model)[site].name
    seqs = _seqs(model, prompts)
    tgt = [model.encode_target(t) for t in targets]
    if any(not t for t in tgt):
        raise InputError("a target is empty; give at least one token")
    out = []
    for i in range(0, len(seqs), 32):
        ids, mask, pos = model.pad_batch(seqs[i:i + 32])
        t = torch.tensor([x[0] for x in tgt[i:i + 32]], device=ids.device)
        with capture(model, [name], grad=True) as store, torch.enable_grad():
            lg = model.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            lp = torch.log_softmax(lg.float(), -1).gather(-1, t[:, None]).sum()
            (g,) = torch.autograd.grad(lp, store[name])
        if pool == "last":
            out.append(g[:, -1].float().cpu())
        else:  # d logp / d(every position moved along v) / n_positions
            out.append(_pool(g.float(), mask, "mean").cpu())
    return torch.cat(out).numpy()


def tcav_score(grads: np.ndarray, cav: np.ndarray) -> float:
    """Share of inputs whose directional derivative along ``cav`` is positive."""
    return float(np.mean(grads @ cav > 0))


def random_sets(n_sets: int, size: int = 50, seed: int = 0,
                pool: Sequence[str] | None = None) -> list[list[str]]:
    """``n_sets`` random sets of ``size`` texts: disjoint sets of held-out zoo text, or random
    subsets of ``pool`` (texts like the concept's but not chosen by it: the fairer null)."""
    if n_sets < 2 or size < 3:
        raise InputError("TCAV needs at least 2 random sets of at least 3 texts")
    rng = random.Random(seed)
    if pool is not None:
        pool = list(pool)
        if len(pool) < size:
            raise InputError(f"the random pool has {len(pool)} texts; it needs at least {size}")
        return [rng.sample(pool, size) for _ in range(n_sets)]
    texts = zoo_corpus("test", n_sets * size, seed=seed + 1)
    rng.shuffle(texts)
    return [texts[i * size:(i + 1) * size] for i in range(n_sets)]


def tcav(model: Any, site: str, concepts: Mapping[str, Sequence[str]], prompts: Sequence[str],
         targets: Sequence[str], *, n_random: int = 10, random_size: int = 50, pool: str = "last",
         alpha: float = 0.05, seed: int = 0, target_name: str = "",
         random_pool: Sequence[str] | None = None) -> TCAVResult:
    """TCAV of each concept for ``prompts`` → ``targets`` at ``site`` (see module docstring);
    random sets from ``random_pool`` when given (see :func:`random_sets`)."""
    if not concepts:
        raise InputError("give at least one concept (name -> example texts)")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    name = site_map(model)[site].name
    sets = random_sets(n_random + 1, random_size, seed, random_pool)
    rand = [pooled_activations(model, name, s, pool) for s in sets]
    grads = input_gradients(model, name, prompts, targets, pool)
    # the null: random-vs-random CAVs whose *positive* set changes with the run too (the set
    # before it), so the null carries the spread that choosing a concept set brings
    null = [tcav_score(grads, train_cav(rand[i], r, seed + i)[0]) for i, r in enumerate(rand[1:])]
    rows = []
    for cname, texts in concepts.items():
        acts = pooled_activations(model, name, texts, pool)
        cavs = [train_cav(acts, r, seed + i) for i, r in enumerate(rand[1:])]
        scores = [tcav_score(grads, v) for v, _ in cavs]
        p = float(ttest_ind(scores, null, equal_var=False).pvalue)
        p = 1.0 if not np.isfinite(p) else p
        rows.append({"concept": cname, "score": float(np.mean(scores)), "scores": scores,
                     "random_scores": null, "p_value": p, "significant": bool(p < alpha),
                     "cav_accuracy": float(np.mean([a for _, a in cavs]))})
    return TCAVResult(site=name, target=target_name, rows=rows, alpha=alpha)
