"""TCAV's significance test (Kim et al. 2018): CAVs against fresh random negative sets, random
concepts as the null, a two-sided t-test, Bonferroni over the concepts tested. Random example
sets must not come out significant beyond the expected rate; a planted concept must."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import lmxray
from lmxray.concepts import continent_tcav, tcav
from lmxray.concepts.cav import _logistic, concept_significance, outlier_p, random_sets
from lmxray.errors import InputError
from lmxray.zoo.tasks import generate
from test_concepts import _one_thread  # noqa: F401  (autouse: one torch thread)


def test_cav_classifier_is_sklearns_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(float)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=5000).fit(x, y)
    w = _logistic(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).numpy()[0]
    assert np.abs(w[:-1] - ref.coef_[0]).max() < 1e-5
    assert abs(w[-1] - ref.intercept_[0]) < 1e-5


def test_outlier_p_is_a_two_sided_prediction_test():
    null = [0.40, 0.45, 0.50, 0.55, 0.60]
    assert outlier_p(0.50, null) == pytest.approx(1.0)
    assert outlier_p(0.60, null) == pytest.approx(outlier_p(0.40, null))
    # t = 0.5 / (0.079 * 1.095) = 5.77 on 4 degrees of freedom
    assert 0.003 < outlier_p(1.0, null) < 0.006
    with pytest.raises(InputError, match="at least 2 random concepts"):
        outlier_p(0.5, [0.5])


def _synthetic(seed: int):
    """A pool of random activations, gradients with a component along e0, and a concept shifted
    along e0 (planted: moving along it raises the output for most inputs)."""
    rng = np.random.default_rng(seed)
    d = 32
    pool = rng.normal(size=(300, d))
    grads = rng.normal(size=(100, d))
    grads[:, 0] += 1.0
    acts = {f"random {j}": pool[rng.choice(300, 30, replace=False)] for j in range(5)}
    acts["planted"] = rng.normal(size=(30, d)) + 2.0 * np.eye(d)[0]
    return acts, pool, grads


@pytest.mark.slow
def test_random_sets_are_not_significant_and_a_planted_concept_is():
    random_hits, planted = 0, []
    for seed in range(4):
        acts, pool, grads = _synthetic(seed)
        rows, m = concept_significance(acts, pool, grads, n_random=20, random_size=30, seed=seed)
        assert m == 6
        by = {r["concept"]: r for r in rows}
        planted.append(by["planted"]["significant"])
        assert by["planted"]["score"] > 0.6
        random_hits += sum(by[f"random {j}"]["significant"] for j in range(5))
        for r in rows:
            assert r["significant"] == (r["p_value"] < 0.05 / 6)
            assert r["p_corrected"] == pytest.approx(min(1.0, 6 * r["p_value"]))
            assert len(r["scores"]) == 20 and len(r["random_scores"]) == 20
    assert all(planted)
    # 20 tests at 0.05 / 6: 0.17 expected false positives; 2 or more has probability 1.3%
    assert random_hits <= 1


@pytest.mark.slow
def test_on_the_zoo_model_random_concepts_are_not_significant_a_continent_is():
    m = lmxray.load()
    facts = generate("facts", "test", None)
    about = [it.prompt for it in facts if it.meta.get("relation") in ("language", "currency")]
    inputs = [it for it in facts
              if it.meta.get("continent") == "Europe" and it.meta["relation"] == "capital"][:60]
    hits, ps = 0, []
    for seed in range(3):
        sets = {f"r{j}": random_sets(1, 40, 100 * seed + j, about)[0] for j in range(8)}
        r = tcav(m, "layers.2.resid_post", sets, [i.prompt for i in inputs],
                 [i.target for i in inputs], n_random=20, pool="mean", random_pool=about,
                 seed=seed)
        assert r.tests == 8
        hits += sum(x["significant"] for x in r.rows)
        ps += [x["p_value"] for x in r.rows]
    # 24 tests at 0.05 / 8: 0.15 expected; the two-sample t-test of run scores flagged ~6
    assert hits <= 1
    assert np.mean(np.asarray(ps) < 0.05) < 0.2  # not piled up near 0 either
    res = continent_tcav(m, "layers.2.resid_post", "South America", n_random=20)
    by = {x["concept"]: x for x in res.rows}
    assert res.tests == 2
    assert by["South America"]["significant"] and by["South America"]["p_value"] < 1e-3
    assert not by["random"]["significant"]
