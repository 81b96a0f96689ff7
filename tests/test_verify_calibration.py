"""Calibration of the faithfulness verdict: the registered `random` method is called faithful
with probability at most alpha.

Under the null the observed attribution and the 999 null draws must be exchangeable: the null
draws what the `random` method draws (independent standard normal scores on the same candidate
positions), and one pre-declared statistic decides (the mean over target steps of the
faithfulness correlation), never a minimum over steps or metrics. The marginal rate is what the
p-value promises: every draw here gets a fresh `random` attribution (the registered method,
seed i) AND a fresh null. Conditional on the subsets and their drops (which do not depend on
either) exchangeability is exact, so the subsets are measured once per example (the costly
part) and the test checks ``P(p <= alpha)`` within a binomial bound. The same harness with the
uncorrected minimum of the per-step p-values is far above alpha: the bound has teeth.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

import lmxray
from lmxray.attribution.base import Context, Request, get_method
from lmxray.attribution.verify import (
    K_CORRELATION,
    check_params,
    null_scores,
    permutation_p_value,
    subset_correlations,
    subset_drops,
)
from lmxray.targets import resolve_target_fn

ALPHA = 0.05
PROMPTS = [("The currency of Trinidad and Tobago is the", " Trinidad and Tobago dollar"),
           ("When Paul and Julia went to the library, Julia gave a ticket to", " Paul at the"),
           ("Keys: k1 gray, k11 yellow, k12 green, k7 red. Query: k11", " yellow and")]
DRAWS = 500  # per prompt: 1500 in all


@pytest.fixture(scope="module")
def m():
    return lmxray.load()


def _plans(m, prompt, target):
    a = m.attribute(prompt, target, method="random")
    ctx = Context(target_fn=resolve_target_fn("logprob"))
    plans, _ = subset_drops(m, a, check_params({}), ctx, np.random.default_rng(1))
    return a, ctx, plans


def _p_values(m, a, ctx, plans, draws):
    """For each draw: p of a fresh `random` attribution (seed = draw) vs a fresh null, for the
    mean over steps (the statistic that decides) and per step. Draws are stacked per step."""
    ids = [int(i) for i in a.source_ids]
    req = Request(ids[: a.prompt_length], ids[a.prompt_length:])
    obs = [get_method("random").fn(m, [req], ctx, seed=d)[0].scores for d in draws]
    rngs = [np.random.default_rng([99, d, *ids]) for d in draws]
    corr = np.stack([
        subset_correlations(np.vstack([np.vstack([o[t, c][None], null_scores(r, len(c))])
                                       for o, r in zip(obs, rngs, strict=True)]), mk, d).reshape(len(draws), -1)
        for t, (c, mk, d) in enumerate(plans)], axis=2)  # [draws, 1 + K, T]
    mean = corr.mean(axis=2)
    decided = [permutation_p_value(x[0], x[1:]) for x in mean]
    steps = [[permutation_p_value(x[0, t], x[1:, t]) for t in range(x.shape[1])] for x in corr]
    return decided, steps


@pytest.mark.slow
def test_random_method_called_faithful_at_most_alpha_marginally(m):
    decided, min_step = [], []
    for prompt, target in PROMPTS:
        a, ctx, plans = _plans(m, prompt, target)
        assert len(plans) >= 2 and all(len(mk) for _, mk, _ in plans)
        for start in range(0, DRAWS, 50):
            ps, steps = _p_values(m, a, ctx, plans, range(start, start + 50))
            decided += ps
            min_step += [min(s) for s in steps]
    ps, n = np.array(decided), len(decided)
    exact = np.floor(ALPHA * (K_CORRELATION + 1)) / (K_CORRELATION + 1)  # 50 / 1000
    se = np.sqrt(exact * (1 - exact) / n)
    rate = (ps <= ALPHA).mean()
    assert rate <= exact + 3 * se, f"random called faithful in {rate:.1%} of {n} draws"
    assert rate >= exact - 3 * se  # not vacuous: the test does reject at its level
    for level in (0.1, 0.25, 0.5):
        assert abs((ps <= level).mean() - level) < 3 * np.sqrt(level * (1 - level) / n) + 1e-3
    # teeth: deciding by the smallest per-step p (no correction) breaks the promise
    assert (np.array(min_step) <= ALPHA).mean() > exact + 3 * se


@pytest.mark.slow
def test_null_draws_what_the_random_method_draws(m):
    """The null and the registered `random` control have one distribution (standard normal per
    candidate cell): the premise of exchangeability."""
    a = m.attribute(PROMPTS[0][0], " dollar", method="random")
    ids = [int(i) for i in a.source_ids]
    req = Request(ids[: a.prompt_length], ids[a.prompt_length:])
    obs = np.concatenate([get_method("random").fn(m, [req], Context(target_fn=resolve_target_fn("logprob")),
                                                  seed=s)[0].scores[0, : a.prompt_length] for s in range(400)])
    null = null_scores(np.random.default_rng(0), a.prompt_length, 400).ravel()
    assert ks_2samp(obs, null).pvalue > 0.001
    assert abs(obs.mean()) < 0.05 and abs(obs.std() - 1) < 0.05
