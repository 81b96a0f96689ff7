"""Concept activation vectors and TCAV (Kim et al. 2018), with the test against random concepts.

- A *CAV* for concept C at a site: an L2-regularised logistic regression (sklearn's
  ``LogisticRegression(C=1)`` objective on standardised features, fitted by Newton's method, many
  runs at once; 33% held out for its accuracy) separating the activations of C's example texts
  from those of a random text set; the vector is its unit-norm weight, signed toward C.
  Activations are pooled per text: the last token (``pool="last"``) or the mean over tokens (BOS
  excluded).
- The *TCAV score* of C for inputs with targets: the share of inputs whose directional derivative
  ``∇_h log p(target | x) · v_C`` is positive (``h``: the site, pooled the same way).
- *Runs*: a concept's score is the mean over ``n_random`` runs, each a CAV of (a subsample of)
  its examples against a fresh random negative set drawn from a pool of random texts (never one of
  the concept's own texts).
- *Significance* (the null of Kim et al.: random-vs-random CAVs): ``n_random`` random concepts —
  random sets from the same pool, as large as the concept — are scored exactly like the concept
  (same runs, fresh negatives). The concept is significant when its score is an outlier among the
  random concepts' scores: a two-sided t-test of one new observation against that sample
  (``t = (s − mean) / (sd · √(1 + 1/M))``, ``M − 1`` degrees of freedom), at ``alpha`` with a
  Bonferroni correction over the concepts tested.

  Why not ``scipy.stats.ttest_ind`` of the concept's run scores against the random runs: a
  concept's runs share its example set, so their scores cluster around that set's own value and
  their spread says nothing about how far a *random* set would land. With 30 runs the two-sample
  test called 25% of random example sets significant at 0.05 (10% at 0.05/6); see
  ``docs/concepts.md``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from ..errors import InputError
from ..hooks import capture
from ..sites import site_map
from ..zoo.tasks import corpus as zoo_corpus
from .data import site_forward
from .results import TCAVResult

__all__ = ["pooled_activations", "train_cav", "fit_cavs", "input_gradients", "tcav_score",
           "tcav", "concept_significance", "random_sets", "outlier_p"]

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


# --------------------------------------------------------------------------- CAVs
def _logistic(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, iters: int = 50) -> torch.Tensor:
    """Weights ``[R, d + 1]`` (last: intercept) minimising ``½‖w‖² + c Σ logloss`` for each of
    the ``R`` problems ``x [R, n, d]``, ``y [R, n]`` (0/1): Newton's method, float64."""
    r, _, d = x.shape
    y = y.to(x.dtype)
    xb = torch.cat([x, x.new_ones(r, x.shape[1], 1)], -1)
    w = x.new_zeros(r, d + 1)
    ridge = torch.ones(d + 1, dtype=x.dtype)
    ridge[-1] = 1e-10  # the intercept is not penalised
    xt = xb.transpose(1, 2)
    for _ in range(iters):
        p = torch.sigmoid(torch.bmm(xb, w[..., None])[..., 0])
        grad = c * torch.bmm(xt, (p - y)[..., None])[..., 0] + ridge * w
        hess = c * torch.bmm(xt * (p * (1 - p))[:, None], xb) + torch.diag(ridge)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-9:
            break
    return w


def fit_cavs(pos: np.ndarray, neg: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CAVs of ``R`` runs at once: ``pos``/``neg`` ``[R, n, d]`` (balanced). Each run holds out
    a third of each class for its accuracy. Returns unit CAVs ``[R, d]`` (toward ``pos``) and the
    held-out accuracies ``[R]``."""
    r, n, d = pos.shape
    if n < 3:
        raise InputError("a CAV needs at least 3 examples in the concept and the random set")
    n_te = max(1, int(round(n / 3)))
    g = np.random.default_rng(seed)
    order = np.stack([g.permutation(n) for _ in range(2 * r)]).reshape(r, 2, n)
    x = torch.from_numpy(np.stack([np.take_along_axis(pos, order[:, 0, :, None], 1),
                                   np.take_along_axis(neg, order[:, 1, :, None], 1)], 1)
                         ).double()  # [R, 2, n, d]
    tr, te = x[:, :, n_te:], x[:, :, :n_te]
    y_tr = torch.cat([torch.ones(n - n_te), torch.zeros(n - n_te)]).double().expand(r, -1)
    xtr = tr.reshape(r, -1, d)
    mu, sd = xtr.mean(1, keepdim=True), xtr.std(1, unbiased=False, keepdim=True) + 1e-6
    w = _logistic((xtr - mu) / sd, y_tr)
    z = torch.einsum("rnd,rd->rn", (te.reshape(r, -1, d) - mu) / sd, w[:, :-1]) + w[:, -1:]
    y_te = torch.cat([torch.ones(n_te), torch.zeros(n_te)]).double()
    acc = ((z > 0).double() == y_te).double().mean(1)
    v = w[:, :-1] / sd[:, 0]  # the direction in the raw activation space
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return v.float().numpy(), acc.numpy()


def train_cav(concept: np.ndarray, rand: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Unit CAV (toward ``concept``) and the classifier's held-out accuracy (one run)."""
    n = min(len(concept), len(rand))
    cavs, acc = fit_cavs(np.asarray(concept)[None, :n], np.asarray(rand)[None, :n], seed)
    return cavs[0], float(acc[0])


# --------------------------------------------------------------------------- scores
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


def outlier_p(score: float, null: Sequence[float]) -> float:
    """Two-sided p-value of ``score`` as one more draw of the normal sample ``null``:
    ``t = (score − mean) / (sd · √(1 + 1/M))`` with ``M − 1`` degrees of freedom."""
    null = np.asarray(null, dtype=float)
    if len(null) < 2:
        raise InputError("the test needs at least 2 random concepts")
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    if sd == 0:
        return 1.0 if score == mean else 0.0
    t = (score - mean) / (sd * np.sqrt(1 + 1 / len(null)))
    return float(2 * stats.t.sf(abs(t), len(null) - 1))


def random_sets(n_sets: int, size: int = 50, seed: int = 0,
                pool: Sequence[str] | None = None) -> list[list[str]]:
    """``n_sets`` random sets of ``size`` texts: disjoint sets of held-out zoo text, or random
    subsets of ``pool`` (texts like the concept's but not chosen by it: the fairer null)."""
    if n_sets < 1 or size < 3:
        raise InputError("TCAV needs random sets of at least 3 texts")
    rng = random.Random(seed)
    if pool is not None:
        pool = list(pool)
        if len(pool) < size:
            raise InputError(f"the random pool has {len(pool)} texts; it needs at least {size}")
        return [rng.sample(pool, size) for _ in range(n_sets)]
    texts = zoo_corpus("test", n_sets * size, seed=seed + 1)
    rng.shuffle(texts)
    return [texts[i * size:(i + 1) * size] for i in range(n_sets)]


# --------------------------------------------------------------------------- the test
class _Runs:
    """Pool activations, input gradients and the random generator of one TCAV call."""

    def __init__(self, pool: np.ndarray, grads: np.ndarray, runs: int, size: int, seed: int):
        self.pool, self.grads, self.runs, self.size = pool, grads, runs, size
        self.rng = np.random.default_rng(seed)

    def scores(self, acts: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCAV scores and CAV accuracies of ``runs`` CAVs: a subsample of ``acts`` against
        fresh random sets of pool rows ``negatives`` (indices), as many as positives."""
        n = min(len(acts), self.size)
        if len(negatives) < n:
            raise InputError(f"the random pool has {len(negatives)} texts outside the concept; "
                             f"it needs at least {n}: give a larger random pool")
        pos = np.stack([acts[self.rng.choice(len(acts), n, replace=False)]
                        for _ in range(self.runs)])
        neg = np.stack([self.pool[self.rng.choice(negatives, n, replace=False)]
                        for _ in range(self.runs)])
        cavs, acc = fit_cavs(pos, neg, int(self.rng.integers(2 ** 31)))
        return (self.grads @ cavs.T > 0).mean(0), acc

    def null(self, size: int) -> list[float]:
        """Scores of ``runs`` random concepts of ``size`` pool texts, each scored like a concept."""
        n_pool = len(self.pool)
        if n_pool < size + min(size, self.size):
            raise InputError(f"the random pool has {n_pool} texts; random concepts of {size} texts "
                             f"need at least {size + min(size, self.size)}: give a larger pool")
        out = []
        for _ in range(self.runs):
            idx = self.rng.choice(n_pool, size, replace=False)
            rest = np.setdiff1d(np.arange(n_pool), idx)
            out.append(float(self.scores(self.pool[idx], rest)[0].mean()))
        return out


def _check(concepts: Mapping[str, Any], alpha: float, n_random: int,
           n_tests: int | None) -> int:
    if not concepts:
        raise InputError("give at least one concept (name -> example texts)")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 2:
        raise InputError(f"n_random must be an integer >= 2, got {n_random!r}")
    m = len(concepts) if n_tests is None else n_tests
    if isinstance(m, bool) or not isinstance(m, int) or m < len(concepts):
        raise InputError(f"n_tests must be an integer >= the {len(concepts)} concepts tested, "
                         f"got {n_tests!r}")
    return m


def concept_significance(acts: Mapping[str, np.ndarray], pool: np.ndarray, grads: np.ndarray, *,
                  n_random: int = 30, random_size: int = 50, alpha: float = 0.05, seed: int = 0,
                  n_tests: int | None = None,
                  exclude: Mapping[str, Sequence[int]] | None = None) -> tuple[list[dict], int]:
    """The TCAV test on arrays (see module docstring): ``acts`` name → ``[n_c, d]`` concept
    activations, ``pool`` ``[N, d]`` random texts' activations, ``grads`` ``[n, d]`` input
    gradients; ``exclude`` name → pool rows that are the concept's own texts (never negatives).
    Returns the result rows and the number of tests the Bonferroni correction counts."""
    m = _check(acts, alpha, n_random, n_tests)
    if isinstance(random_size, bool) or not isinstance(random_size, int) or random_size < 3:
        raise InputError(f"random_size must be an integer >= 3, got {random_size!r}")
    runs = _Runs(pool, grads, n_random, random_size, seed)
    nulls: dict[int, list[float]] = {}
    rows = []
    for cname, a in acts.items():
        neg = np.setdiff1d(np.arange(len(pool)), np.asarray((exclude or {}).get(cname, ()), int))
        scores, acc = runs.scores(a, neg)
        if len(a) not in nulls:
            nulls[len(a)] = runs.null(len(a))
        score = float(scores.mean())
        p = outlier_p(score, nulls[len(a)])
        rows.append({"concept": cname, "score": score, "scores": scores.tolist(),
                     "random_scores": nulls[len(a)], "p_value": p, "p_corrected": min(1.0, p * m),
                     "significant": bool(p < alpha / m), "cav_accuracy": float(acc.mean())})
    return rows, m


def tcav(model: Any, site: str, concepts: Mapping[str, Sequence[str]], prompts: Sequence[str],
         targets: Sequence[str], *, n_random: int = 30, random_size: int = 50, pool: str = "last",
         alpha: float = 0.05, seed: int = 0, target_name: str = "",
         random_pool: Sequence[str] | None = None, n_tests: int | None = None) -> TCAVResult:
    """TCAV of each concept for ``prompts`` → ``targets`` at ``site`` (see module docstring):
    ``n_random`` runs per concept and ``n_random`` random concepts, CAVs on ``random_size``
    examples a side; random texts from ``random_pool`` (default: held-out zoo text);
    significance at ``alpha / n_tests`` (Bonferroni; default: the number of concepts)."""
    _check(concepts, alpha, n_random, n_tests)
    name = site_map(model)[site].name
    grads = input_gradients(model, name, prompts, targets, pool)
    acts = {c: pooled_activations(model, name, t, pool) for c, t in concepts.items()}
    biggest = max(len(a) for a in acts.values())
    texts = list(random_pool) if random_pool is not None else zoo_corpus(
        "test", max(5 * random_size, biggest + 2 * random_size), seed=seed + 1)
    owns = {c: set(ct) for c, ct in concepts.items()}
    exclude = {c: [i for i, t in enumerate(texts) if t in own] for c, own in owns.items()}
    rows, m = concept_significance(acts, pooled_activations(model, name, texts, pool), grads,
                            n_random=n_random, random_size=random_size, alpha=alpha, seed=seed,
                            n_tests=n_tests, exclude=exclude)
    return TCAVResult(site=name, target=target_name, rows=rows, alpha=alpha, tests=m)
