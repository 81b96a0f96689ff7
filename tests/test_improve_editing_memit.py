"""MEMIT and the ROME value optimised through the rank-one update: the hook equals the edited
weights, the MEMIT update is the covariance-weighted least-squares solution, weights come back
bit-exactly, requests are checked, CounterFact metrics (n-gram entropy, consistency); the issue's
floors on the zoo model under ``slow``."""

from __future__ import annotations

import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.hooks import run_with_cache
from lmxray.improve.edit_metrics import consistency, ngram_entropy
from lmxray.improve.editing import (
    context_prefixes,
    key_covariance,
    rank_one_hook,
    rome_edit,
)
from lmxray.improve.memit import EditRequest, default_layers, memit_edit

TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Berlin is in Germany, Madrid is in Spain.",
] * 4
REQS = [("The capital of France is", "France", " Rome"),
        ("Berlin is in", "Berlin", " Spain"),
        ("When Mary went", "Mary", " store")]


@pytest.fixture(scope="module")
def m():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    hf, tok = build_tiny("llama")
    yield lmxray.load(model=hf, tokenizer=tok)
    torch.set_num_threads(n)


def test_rank_one_hook_is_the_edited_weight(m):
    cov = key_covariance(m, 0, TEXTS)
    ed = rome_edit(m, *REQS[0], layer=0, cov=cov, steps=5, prefixes=context_prefixes(TEXTS, 2))
    assert ed.info["prefixes"] == 2
    site = "layers.1.resid_post"
    with rank_one_hook(m, 0, ed.key, ed.value):
        hooked = run_with_cache(m, TEXTS[0], cache=[site])[site]
    with ed.applied(m):
        edited = run_with_cache(m, TEXTS[0], cache=[site])[site]
    plain = run_with_cache(m, TEXTS[0], cache=[site])[site]
    assert torch.allclose(hooked, edited, atol=1e-4)
    assert not torch.allclose(plain, edited, atol=1e-4)


def test_memit_is_the_least_squares_update_and_restores_weights(m):
    texts = TEXTS
    covs = {0: key_covariance(m, 0, texts)}
    before = {k: v.detach().clone() for k, v in m.hf.state_dict().items()}
    ed = memit_edit(m, REQS, layers=[0], covs=covs, mom2_weight=10.0, steps=3)
    assert set(ed.deltas) == {0} and ed.deltas[0].shape[0] == m.d_model
    d = ed.deltas[0].double()
    # the layer-0 input does not depend on the edit, so every position's MLP output moves by ΔW k
    site = "layers.0.mlp.hidden"
    k = run_with_cache(m, REQS[0][0], cache=[site])[site][0, -2].double()
    with ed.applied(m):
        out1 = run_with_cache(m, REQS[0][0], cache=["layers.0.mlp.out"])["layers.0.mlp.out"][0, -2]
    out0 = run_with_cache(m, REQS[0][0], cache=["layers.0.mlp.out"])["layers.0.mlp.out"][0, -2]
    assert torch.allclose((out1 - out0).double(), d @ k, atol=1e-3 * max(1.0, float((d @ k).norm())))
    assert all(torch.equal(before[n], v) for n, v in m.hf.state_dict().items())
    copy = ed.apply(m)
    assert copy.hf is not m.hf and copy.name.endswith("+memit")
    assert all(torch.equal(before[n], v) for n, v in m.hf.state_dict().items())


def test_memit_solution_matches_normal_equations(m):
    """ΔW = Rᵀ K (λC + KᵀK)⁻¹ solves the normal equations ΔW (λC + KᵀK) = Rᵀ K."""
    covs = {0: key_covariance(m, 0, TEXTS)}
    ed = memit_edit(m, REQS[:2], layers=[0], covs=covs, mom2_weight=5.0, steps=2)
    d = ed.deltas[0].double()
    assert torch.linalg.matrix_rank(d, rtol=1e-5) <= 2  # one direction per request


def test_requests_and_layers():
    assert EditRequest.of(("The capital of France is", "France", "Rome")).target == " Rome"
    assert EditRequest.of({"prompt": "a b", "subject": "a", "target": " c"}).prompt == "a b"
    with pytest.raises(InputError, match="does not occur"):
        EditRequest.of(("a b", "z", " c"))
    with pytest.raises(InputError, match="needs a prompt"):
        EditRequest.of(("a b", "a", " "))
    assert default_layers(4, 0) == [0, 1] and default_layers(4, 3) == [3]
    assert default_layers(2, 0) == [0] and default_layers(4, 2) == [2]
    assert default_layers(48, 10) == list(range(10, 22))


def test_ngram_entropy_and_consistency():
    import numpy as np

    assert ngram_entropy("a a a a a a") == 0.0
    assert ngram_entropy("") == 0.0
    # 4 distinct bigrams (2 bits) and 3 distinct trigrams (log2 3), weights 2/3 and 4/3
    want = (2 / 3 * 2.0 + 4 / 3 * np.log2(3)) / 2
    assert ngram_entropy("a b c d e") == pytest.approx(want)
    assert ngram_entropy("x y x y x y x y") < ngram_entropy("the cat sat on a warm mat today")
    assert consistency(np.array([True, True, False]),
                       [np.array([True]), np.array([False]), np.array([True])]) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------- floors (slow)
@pytest.fixture(scope="module")
def zoo():
    from lmxray.cli.internals import zoo_facts

    return lmxray.load(), zoo_facts(n=None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [23])  # never tuned on
def test_rome_floor_at_an_untuned_seed(zoo, seed):
    from lmxray.improve.editing import evaluate_edits

    m, facts = zoo
    r = evaluate_edits(m, facts, n_edits=30, compare_random=False, seed=seed, progress=False)
    row = r.rows["located"]
    assert row["n"] == 30
    assert row["efficacy"] >= 0.95 and row["specificity"] >= 0.95
    assert row["paraphrase"] > r.rows["unedited"]["paraphrase"]
