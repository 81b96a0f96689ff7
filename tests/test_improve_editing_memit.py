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
    key_covariances,
    rank_one_hook,
    rome_edit,
)
from lmxray.improve.memit import (
    EditRequest,
    default_layers,
    least_squares_update,
    memit_edit,
    preserved_keys,
)
from lmxray.internals.tracing import subject_positions

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
    """ΔW = Rᵀ K (λC + KᵀK)⁻¹ solves the normal equations ΔW (λC + KᵀK) = Rᵀ K, with K and R
    read directly from the model (keys at the subject's last token, residual z - h)."""
    cov = key_covariance(m, 0, TEXTS)
    lam = 5.0
    ed = memit_edit(m, REQS[:2], layers=[0], covs={0: cov}, mom2_weight=lam, steps=2)
    d = ed.deltas[0].double()
    assert torch.linalg.matrix_rank(d, rtol=1e-5) <= 2  # one direction per request
    # direct computation: no prefixes, so each key is the bare prompt's subject-last-token key
    k = []
    for prompt, subject, _ in REQS[:2]:
        pos = max(subject_positions(m, prompt, subject))
        k.append(run_with_cache(m, prompt, cache=["layers.0.mlp.hidden"])["layers.0.mlp.hidden"][0, pos])
    keys = torch.stack(k).double()
    h = []
    for prompt, subject, _ in REQS[:2]:
        pos = max(subject_positions(m, prompt, subject))
        h.append(run_with_cache(m, prompt, cache=["layers.0.resid_post"])["layers.0.resid_post"][0, pos])
    resid = ed.targets - torch.stack(h).double()  # one layer: all of z - h is written there
    lhs = d @ (lam * cov.double() + keys.T @ keys)
    assert torch.allclose(lhs, resid.T @ keys, atol=1e-3 * float(lhs.abs().max()))


def test_key_covariances_in_one_pass_match_each_layer(m):
    both = key_covariances(m, [1, 0], TEXTS[:3])
    assert sorted(both) == [0, 1]
    for ly in (0, 1):
        assert torch.allclose(both[ly], key_covariance(m, ly, TEXTS[:3]), atol=1e-10)
    assert not torch.allclose(both[0], both[1])


def test_key_rows_mean_prompt_each(m):
    """One least-squares row per request ("mean" over the prefixes, or the bare "prompt") or per
    variant ("each": prompt + 2 prefixes = 3 rows per request); the updates differ."""
    covs = {0: key_covariance(m, 0, TEXTS)}
    pre = context_prefixes(TEXTS, 2)
    eds = {kr: memit_edit(m, REQS[:2], layers=[0], covs=covs, prefixes=pre, steps=2,
                          key_rows=kr) for kr in ("mean", "prompt", "each")}
    assert {kr: tuple(e.targets.shape) for kr, e in eds.items()} == {
        "mean": (2, m.d_model), "prompt": (2, m.d_model), "each": (6, m.d_model)}
    assert eds["each"].info["key_rows"] == "each"
    assert not torch.allclose(eds["mean"].deltas[0], eds["prompt"].deltas[0])
    assert not torch.allclose(eds["each"].deltas[0], eds["prompt"].deltas[0])


def test_least_squares_update_solves_the_normal_equations():
    g = torch.Generator().manual_seed(0)
    n, dm, dk, lam = 7, 5, 11, 3.0
    keys, resid = torch.randn(n, dk, generator=g), torch.randn(n, dm, generator=g)
    a = torch.randn(dk, dk, generator=g, dtype=torch.float64)
    cov = a @ a.T / dk + 0.1 * torch.eye(dk, dtype=torch.float64)
    d = least_squares_update(keys, resid, cov, lam)
    assert d.dtype == torch.float64 and d.shape == (dm, dk)
    k = keys.double()
    assert torch.allclose(d @ (lam * cov + k.T @ k), resid.double().T @ k, atol=1e-9)
    # it minimises ‖ΔW Kᵀ - Rᵀ‖² + λ tr(ΔW C ΔWᵀ): any perturbation raises the objective
    def obj(w):
        return float(((w @ k.T - resid.double().T) ** 2).sum() + lam * torch.trace(w @ cov @ w.T))
    for _ in range(5):
        assert obj(d + 1e-3 * torch.randn(dm, dk, generator=g, dtype=torch.float64)) > obj(d)


def test_preservation_rows_enter_the_normal_equations_and_hold_their_keys():
    g = torch.Generator().manual_seed(2)
    n, dm, dk, lam = 4, 5, 11, 1.0
    keys, resid = torch.randn(n, dk, generator=g), torch.randn(n, dm, generator=g)
    cov = torch.eye(dk, dtype=torch.float64)
    kp = torch.randn(3, dk, generator=g, dtype=torch.float64)
    p = kp.T @ kp / 3
    k = keys.double()
    d = least_squares_update(keys, resid, cov, lam, p, 7.0)
    assert torch.allclose(d @ (lam * cov + 7.0 * p + k.T @ k), resid.double().T @ k, atol=1e-9)
    assert torch.equal(least_squares_update(keys, resid, cov, lam, p, 0.0),
                       least_squares_update(keys, resid, cov, lam))
    leak = [float((least_squares_update(keys, resid, cov, lam, p, mu) @ kp.T).norm())
            for mu in (0.0, 10.0, 1e4)]
    assert leak[0] > leak[1] > leak[2] and leak[2] < 1e-2 * leak[0]


def test_preserved_keys_are_the_subjects_last_token_keys(m):
    texts = ["Berlin is in Germany, Madrid is in Spain.", "Rome and Berlin.", "no match here"]
    got = preserved_keys(m, [0, 1], texts, ["Berlin", "Spain", "Ber"])  # "Ber": whole words only
    want: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for t in texts:
        for s in ("Berlin", "Spain"):
            if s in t:  # at most once per text here
                c = run_with_cache(m, t, cache=["layers.0.mlp.hidden", "layers.1.mlp.hidden"])
                for ly in (0, 1):
                    want[ly].append(c[f"layers.{ly}.mlp.hidden"][0, max(
                        subject_positions(m, t, s))].double())
    assert len(want[0]) == 3
    for ly in (0, 1):
        k = torch.stack(want[ly])
        assert torch.allclose(got[ly], k.T @ k / len(k), atol=1e-5)
    assert preserved_keys(m, [0], texts, ["Paris"]) == {}


def test_memit_holds_the_preserved_subjects_keys(m):
    covs = {0: key_covariance(m, 0, TEXTS)}
    kw = {"layers": [0], "covs": covs, "cov_texts": TEXTS, "steps": 3, "mom2_weight": 1.0}
    plain = memit_edit(m, REQS[:1], preserve_weight=0.0, **kw)
    held = memit_edit(m, REQS[:1], preserve_subjects=["Berlin", "France"], preserve_weight=100.0,
                      **kw)
    assert held.info["preserve_weight"] == 100.0 and plain.info["preserve_weight"] == 0.0
    p = preserved_keys(m, [0], TEXTS, ["Berlin"])[0]  # "France" is the request's own subject
    def leak(d):
        return float(torch.trace(d.double() @ p @ d.double().T))
    assert leak(held.deltas[0]) < 0.1 * leak(plain.deltas[0])
    with pytest.raises(InputError, match="preserve_weight"):
        memit_edit(m, REQS[:1], preserve_weight=-1.0, **kw)


def test_target_correction_moves_only_the_unmet_requests(m):
    """A correction round re-optimises the targets of the requests the first solve left unmet
    (on the edited model) and solves all again; met requests keep their targets."""
    from lmxray.improve.editing import top1

    covs = {0: key_covariance(m, 0, TEXTS)}
    kw = {"layers": [0], "covs": covs, "steps": 3, "mom2_weight": 10.0}
    plain = memit_edit(m, REQS, correct_rounds=0, **kw)
    fixed = memit_edit(m, REQS, correct_rounds=1, **kw)
    with plain.applied(m):
        met = top1(m, [(p, t) for p, _, t in REQS])
    assert not met.all()  # 3 steps leave some request unmet on the tiny model
    assert plain.info["corrected"] == [] and fixed.info["corrected"] == [int((~met).sum())]
    moved = (fixed.targets - plain.targets).norm(dim=-1) > 1e-9
    assert moved.tolist() == (~met).tolist()
    assert not torch.allclose(fixed.deltas[0], plain.deltas[0])


def test_one_memit_edit_is_the_rome_direction():
    """With one request, Sherman-Morrison: ΔW = r (C⁻¹k)ᵀ / (λ + kᵀC⁻¹k): ROME's key direction
    C⁻¹k, and ROME's exact update r (C⁻¹k)ᵀ / (kᵀC⁻¹k) as λ → 0."""
    g = torch.Generator().manual_seed(1)
    dk, dm = 9, 4
    a = torch.randn(dk, dk, generator=g, dtype=torch.float64)
    cov = a @ a.T / dk + 0.1 * torch.eye(dk, dtype=torch.float64)
    k, r = torch.randn(dk, generator=g, dtype=torch.float64), torch.randn(dm, generator=g,
                                                                           dtype=torch.float64)
    cinv_k = torch.linalg.solve(cov, k)
    for lam in (2.0, 1e-4):
        d = least_squares_update(k[None], r[None], cov, lam)
        assert torch.allclose(d, torch.outer(r, cinv_k) / (lam + k @ cinv_k), atol=1e-9)
    rome = torch.outer(r, cinv_k) / (k @ cinv_k)
    assert torch.allclose(d @ k, r, atol=1e-4) and torch.allclose(d, rome, atol=1e-4)
    assert not torch.allclose(least_squares_update(k[None], r[None], cov, 2.0), rome, atol=1e-4)


def test_memit_samples_one_edit_per_subject():
    """Edits applied together never share a subject (one key, two values), where ROME's
    one-at-a-time sampling takes one per (subject, relation)."""
    import numpy as np

    from lmxray.improve.editing import _choose_facts

    facts = [{"prompt": f"{s} {r} {t}", "subject": s, "subject_text": s, "relation": r,
              "answer": " x"} for s in "abcdef" for r in ("p", "q") for t in (1, 2)]
    known = np.ones(len(facts), bool)
    both, _ = _choose_facts(facts, known, 12, 0)
    assert len({(facts[i]["subject"], facts[i]["relation"]) for i in both}) == 12
    one, _ = _choose_facts(facts, known, 6, 0, one_per_subject=True)
    assert sorted(facts[i]["subject"] for i in one) == list("abcdef")
    with pytest.raises(InputError, match="only 6 subjects"):
        _choose_facts(facts, known, 7, 0, one_per_subject=True)


def test_requests_and_layers():
    assert EditRequest.of(("The capital of France is", "France", "Rome")).target == " Rome"
    assert EditRequest.of({"prompt": "a b", "subject": "a", "target": " c"}).prompt == "a b"
    with pytest.raises(InputError, match="does not occur"):
        EditRequest.of(("a b", "z", " c"))
    with pytest.raises(InputError, match="needs a prompt"):
        EditRequest.of(("a b", "a", " "))
    assert default_layers(4, 0) == [0] and default_layers(4, 3) == [3]
    assert default_layers(2, 0) == [0] and default_layers(4, 2) == [2]
    assert default_layers(4, 0, span=2) == [0, 1]
    assert default_layers(28, 3) == list(range(3, 8))
    assert default_layers(48, 10) == list(range(10, 18))


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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [23])  # never tuned on
def test_memit_floor_at_an_untuned_seed(zoo, seed):
    """100 edits at once: efficacy and specificity >= 0.90 together, the held-out LM loss
    within 5 % of the unedited model's (the n-gram entropy is reported, not asserted: see
    docs/improve.md, "MEMIT", for why it rises)."""
    from lmxray.improve.memit import evaluate_memit

    m, facts = zoo
    r = evaluate_memit(m, facts, n_edits=100, seed=seed, progress=False)
    row, before = r.rows["memit"], r.rows["unedited"]
    assert row["n"] == 100 and r.info["preserve_weight"] > 0
    assert row["efficacy"] >= 0.90 and row["specificity"] >= 0.90
    assert abs(row["lm_loss"] / before["lm_loss"] - 1) <= 0.05
