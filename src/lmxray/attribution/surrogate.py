"""LIME per target step: a local linear surrogate of the target function.

Ribeiro, Singh & Guestrin (2016), "Why should I trust you?": sample perturbations of the input
near it, weight them by their proximity, and fit a weighted linear model whose coefficients are
the attributions. lmxray follows the reference text explainer (``lime.lime_text``): the first
sample is the input itself; every other sample removes ``k ~ U{1..n}`` features chosen
uniformly; the distance to the input is the cosine distance of the binary indicator vectors times
100; the weight is ``sqrt(exp(-d^2 / kernel_width^2))`` (``kernel_width=25``); the surrogate is
scikit-learn's ``Ridge(alpha=1)`` with an intercept. Differences: every feature gets a
coefficient (no top-k feature selection), and each target step gets its own surrogate, fitted on
the features the step can read (the others are null players and get 0).

The features and the game are those of :mod:`lmxray.attribution._games` (token/word/sentence
or spans; removal or a baseline token). ``info["surrogate_r2"]`` holds each step's weighted R^2
and ``info["intercept"]`` each step's intercept. Passes: ``n_samples`` coalitions per prompt, each
one sequence for all steps; duplicates once, shared prefixes from the KV cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ._games import build_games, evaluate, game_info, int_param, spread
from .base import Context, MethodOutput, Request
from .shapley import coalition_method

__all__ = ["lime_samples", "lime_weights"]


def lime_samples(rng: np.random.Generator, n_features: int, n_samples: int) -> np.ndarray:
    """``[n_samples, n_features]`` indicators: the input, then samples with ``k ~ U{1..n}`` removed."""
    z = np.ones((n_samples, n_features), dtype=bool)
    if n_features == 0:
        return z
    sizes = rng.integers(1, n_features + 1, size=n_samples - 1)
    for i, k in enumerate(sizes, start=1):
        z[i, rng.choice(n_features, size=int(k), replace=False)] = False
    return z


def lime_weights(z: np.ndarray, kernel_width: float) -> np.ndarray:
    """``sqrt(exp(-d^2 / width^2))`` with ``d`` = 100 x cosine distance to the all-ones row."""
    from sklearn.metrics.pairwise import cosine_distances

    d = cosine_distances(z.astype(np.float64), np.ones((1, z.shape[1]))).ravel() * 100
    return np.sqrt(np.exp(-(d**2) / kernel_width**2))


def _check_number(value: Any, name: str, *, strictly_positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and np.isfinite(value)
    if not ok or value < 0 or (strictly_positive and value == 0):
        what = "positive" if strictly_positive else "non-negative"
        raise InputError(f"{name} must be a {what} number, got {value!r}")


@coalition_method(
    "lime",
    "LIME per target step: proximity-weighted ridge surrogate over removed features.",
    "n_samples coalitions per prompt",
)
def lime(
    model: Any, requests: list[Request], ctx: Context, *, n_samples: int = 256,
    kernel_width: float = 25.0, alpha: float = 1.0, seed: int = 0, features: Any = "token",
    replace: str = "remove", baseline: Any = "auto", sources: str = "all",
) -> list[MethodOutput]:
    from sklearn.linear_model import Ridge

    n_samples = int_param(n_samples, "n_samples", 2)
    seed = int_param(seed, "seed", 0)
    _check_number(kernel_width, "kernel_width", strictly_positive=True)
    _check_number(alpha, "alpha", strictly_positive=False)
    games = build_games(model, requests, features, replace, baseline, sources)
    coalitions = [lime_samples(g.rng(seed), g.n_players, n_samples) for g in games]
    values, full, stats = evaluate(model, games, coalitions, ctx)
    outs = []
    for g, z, v, fx in zip(games, coalitions, values, full, strict=True):
        t_n = g.req.n_target
        phi = np.zeros((t_n, g.n_players))
        r2: list[float | None] = []
        intercept: list[float] = []
        for t in range(t_n):
            rel = g.relevant[t]
            x = z[:, rel].astype(np.float64)
            w = lime_weights(x, float(kernel_width)) if x.shape[1] else np.ones(len(x))
            if x.shape[1] == 0:
                r2.append(None)
                intercept.append(float(np.average(v[:, t], weights=w)))
                continue
            reg = Ridge(alpha=float(alpha), fit_intercept=True)
            reg.fit(x, v[:, t], sample_weight=w)
            phi[t, rel] = reg.coef_
            intercept.append(float(reg.intercept_))
            score = reg.score(x, v[:, t], sample_weight=w)
            r2.append(float(score) if np.isfinite(score) else None)
        scores, undefined = spread(g, phi)
        info = game_info(g, stats, None)
        info.update(
            n_samples=n_samples, kernel_width=float(kernel_width), alpha=float(alpha), seed=seed,
            surrogate_r2=r2, intercept=intercept,
        )
        if undefined:
            info["undefined_cells"] = undefined
        outs.append(MethodOutput(scores.astype(np.float32), fx.astype(np.float32), info))
    return outs
