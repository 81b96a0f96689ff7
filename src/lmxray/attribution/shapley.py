"""Shapley-value attribution per target step: permutation sampling and KernelSHAP.

The players are token features (tokens, words, sentences or given spans) and the game is the
target function of each target step with absent players removed or replaced
(:mod:`lmxray.attribution._games`). The Shapley value of player ``i`` at step ``t`` is

    phi_t(i) = sum_{S without i} |S|! (n - |S| - 1)! / n! * (v_t(S + i) - v_t(S)),

and the values of a step sum to ``v_t(all) - v_t(empty)`` (efficiency).

- ``shapley_sampling``: Castro, Gomez & Tejada (2009), "Polynomial calculation of the Shapley
  value based on sampling": the mean marginal contribution over random permutations. Each
  permutation's contributions telescope, so efficiency holds exactly for any number of samples.
  Permutations come in antithetic pairs (a permutation and its reverse; Mitchell et al. 2022,
  "Sampling permutations for Shapley value estimation"), which cancels much of the variance.
  ``info["standard_error"]`` gives the standard error of each score.
- ``kernel_shap``: Lundberg & Lee (2017), "A unified approach to interpreting model predictions":
  the Shapley values are the solution of a weighted least-squares fit of ``v(S) - v(empty)`` on
  the coalition indicators with the Shapley kernel ``(n - 1) / (C(n, |S|) |S| (n - |S|))`` under the
  efficiency constraint. With ``2^n - 2 <= n_samples`` (or ``exact=True``) every coalition is
  enumerated and the result is exact; otherwise coalition sizes are sampled from the kernel
  (complement pairs) and fitted unweighted (Covert & Lee 2021, "Improving KernelSHAP").

One set of coalitions serves every target step: players a step cannot read are null players, get
exactly 0, and the fit of each step uses only the players it reads. Passes: every coalition is
one sequence scored for all steps at once; duplicates are scored once and shared prefixes come
from the KV cache (:mod:`lmxray.attribution._prefix`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ._games import build_games, evaluate, game_info, int_param, spread
from .base import Context, MethodFn, MethodOutput, Request, register_method

__all__ = ["shapley_kernel_weights", "constrained_wls", "antithetic_permutations"]

_MAX_EXACT_PLAYERS = 20


def coalition_method(name: str, description: str, coalitions: str) -> Callable[[MethodFn], MethodFn]:
    """Register a coalition-game method (shapley_sampling, kernel_shap, lime: kind
    ``perturbation``); ``coalitions``: how many it evaluates per prompt. Every coalition is one
    sequence for all steps, duplicates run once, shared prefixes come from the KV cache."""
    passes = f"{coalitions}, each one sequence for all steps; duplicates once, shared prefixes from the KV cache"
    return register_method(name, description=description, kind="perturbation", passes=passes)


def antithetic_permutations(rng: np.random.Generator, n_players: int, n: int) -> np.ndarray:
    """``[n, n_players]`` permutations: pairs of a random permutation and its reverse."""
    out = np.empty((n, n_players), dtype=np.int64)
    for k in range(0, n, 2):
        p = rng.permutation(n_players)
        out[k] = p
        if k + 1 < n:
            out[k + 1] = p[::-1]
    return out


@coalition_method(
    "shapley_sampling",
    "Shapley values per target step by permutation sampling (antithetic pairs).",
    "n_samples x (players + 1) coalitions per prompt",
)
def shapley_sampling(
    model: Any, requests: list[Request], ctx: Context, *, n_samples: int = 25, seed: int = 0,
    features: Any = "token", replace: str = "remove", baseline: Any = "auto", sources: str = "all",
) -> list[MethodOutput]:
    n_samples = int_param(n_samples, "n_samples", 1)
    seed = int_param(seed, "seed", 0)
    games = build_games(model, requests, features, replace, baseline, sources)
    perms, coalitions = [], []
    for g in games:
        n = g.n_players
        p = antithetic_permutations(g.rng(seed), n, n_samples)
        rank = np.argsort(p, axis=1)  # rank[s, player] = its place in permutation s
        # coalition k of permutation s holds the players placed before k
        z = rank[:, None, :] < np.arange(n + 1)[None, :, None]  # [samples, n + 1, players]
        perms.append(p)
        coalitions.append(z.reshape(-1, n))
    values, full, stats = evaluate(model, games, coalitions, ctx)
    outs = []
    for g, p, v, fx in zip(games, perms, values, full, strict=True):
        n, t_n = g.n_players, g.req.n_target
        v = v.reshape(n_samples, n + 1, t_n)
        marg = np.diff(v, axis=1)  # [samples, n, T]: contribution of the player at place k
        contrib = np.empty_like(marg)
        rows = np.arange(n_samples)[:, None]
        contrib[rows, p] = marg  # reorder places -> players
        contrib = np.transpose(contrib, (0, 2, 1))  # [samples, T, players]
        contrib[:, ~g.relevant] = 0.0
        phi = contrib.mean(axis=0)
        se = _standard_error(contrib)
        scores, undefined = spread(g, phi)
        se_scores, _ = spread(g, se) if se is not None else (None, 0)
        empty = v[0, 0]
        info = game_info(g, stats, empty)
        info.update(n_samples=n_samples, seed=seed, antithetic=True)
        if se_scores is not None:
            info["standard_error"] = [
                [None if math.isnan(x) else x for x in row] for row in se_scores.tolist()
            ]
        if undefined:
            info["undefined_cells"] = undefined
        outs.append(MethodOutput(scores.astype(np.float32), fx.astype(np.float32), info))
    return outs


def _standard_error(contrib: np.ndarray) -> np.ndarray | None:
    """Standard error of the mean over antithetic pairs (pairs are the independent draws)."""
    n = contrib.shape[0]
    pairs = n // 2
    if pairs < 2:
        return None
    pair_means = contrib[: 2 * pairs].reshape(pairs, 2, *contrib.shape[1:]).mean(axis=1)
    return pair_means.std(axis=0, ddof=1) / math.sqrt(pairs)


# ------------------------------------------------------------------------------ KernelSHAP
def shapley_kernel_weights(n: int, sizes: np.ndarray) -> np.ndarray:
    """Shapley kernel ``(n - 1) / (C(n, k) k (n - k))`` for coalition sizes ``0 < k < n``."""
    k = np.asarray(sizes, dtype=np.float64)
    comb = np.array([math.comb(n, int(x)) for x in sizes], dtype=np.float64)
    return (n - 1) / (comb * k * (n - k))


def constrained_wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, total: float) -> np.ndarray:
    """``argmin_phi sum_k w_k (y_k - x_k . phi)^2`` subject to ``sum(phi) = total``.

    Args:
        x: ``[K, m]`` coalition indicators; y: ``[K]``; w: ``[K]`` non-negative weights.

    The constraint is eliminated (``phi_m = total - sum(phi_<m)``) and the rest solved by
    ``numpy.linalg.lstsq`` (minimum-norm where the design is rank deficient).
    """
    m = x.shape[1]
    if m == 0:
        return np.zeros(0)
    if m == 1:
        return np.array([total], dtype=np.float64)
    a = x[:, :-1] - x[:, -1:]
    b = y - x[:, -1] * total
    sw = np.sqrt(w)
    sol, *_ = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)
    return np.concatenate([sol, [total - sol.sum()]])


def _kernel_samples(rng: np.random.Generator, n: int, n_samples: int) -> np.ndarray:
    """``[n_samples, n]`` coalitions with sizes drawn from the Shapley kernel, in complement pairs."""
    sizes = np.arange(1, n)
    p = (n - 1) / (sizes * (n - sizes))
    p = p / p.sum()
    z = np.zeros((n_samples, n), dtype=bool)
    for k in range(0, n_samples, 2):
        size = rng.choice(sizes, p=p)
        members = rng.choice(n, size=size, replace=False)
        z[k, members] = True
        if k + 1 < n_samples:
            z[k + 1] = ~z[k]
    return z


def _all_coalitions(n: int) -> np.ndarray:
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


@coalition_method(
    "kernel_shap",
    "KernelSHAP per target step: Shapley kernel-weighted regression (exact for few players).",
    "2^players coalitions (exact) or n_samples + 2 per prompt",
)
def kernel_shap(
    model: Any, requests: list[Request], ctx: Context, *, n_samples: int = 256,
    exact: Any = "auto", seed: int = 0, features: Any = "token", replace: str = "remove",
    baseline: Any = "auto", sources: str = "all",
) -> list[MethodOutput]:
    n_samples = int_param(n_samples, "n_samples", 1)
    seed = int_param(seed, "seed", 0)
    if exact not in ("auto", True, False):
        raise InputError(f"exact must be 'auto', True or False, got {exact!r}")
    games = build_games(model, requests, features, replace, baseline, sources)
    coalitions, weights, modes = [], [], []
    for g in games:
        n = g.n_players
        enumerate_all = exact is True or (exact == "auto" and 2**n - 2 <= n_samples) or n <= 1
        if enumerate_all and n > _MAX_EXACT_PLAYERS:
            raise InputError(
                f"exact KernelSHAP enumerates 2^{n} coalitions; use exact='auto' or group "
                "tokens with features='word' or 'sentence'"
            )
        if enumerate_all:
            z = _all_coalitions(n)
            sizes = z.sum(1)
            inner = (sizes > 0) & (sizes < n)
            w = np.zeros(len(z))
            w[inner] = shapley_kernel_weights(n, sizes[inner])
        else:
            z = np.concatenate(
                [np.zeros((1, n), bool), np.ones((1, n), bool),
                 _kernel_samples(g.rng(seed), n, n_samples)]
            )
            w = np.ones(len(z))
            w[:2] = 0.0
        coalitions.append(z)
        weights.append(w)
        modes.append(bool(enumerate_all))
    values, full, stats = evaluate(model, games, coalitions, ctx)
    outs = []
    for g, z, w, v, fx, ex in zip(games, coalitions, weights, values, full, modes, strict=True):
        empty_idx = int(np.flatnonzero(~z.any(1))[0])
        v0 = v[empty_idx]
        phi = np.zeros((g.req.n_target, g.n_players))
        inner = w > 0
        for t in range(g.req.n_target):
            rel = g.relevant[t]
            phi[t, rel] = constrained_wls(
                z[inner][:, rel].astype(np.float64), v[inner, t] - v0[t], w[inner], fx[t] - v0[t]
            )
        scores, undefined = spread(g, phi)
        info = game_info(g, stats, v0)
        info.update(exact=ex, n_coalitions=int(len(z)), seed=seed)
        if not ex:
            info["n_samples"] = n_samples
        if undefined:
            info["undefined_cells"] = undefined
        outs.append(MethodOutput(scores.astype(np.float32), fx.astype(np.float32), info))
    return outs
