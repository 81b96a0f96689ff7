"""Faithfulness metrics: hand-computed bins and curves, a plain-loop oracle on tiny models,
axioms (occlusion is optimal for its own top-1 removal), batching invariance, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.evaluate.faithfulness import (
    Faithfulness,
    bin_sizes,
    curve_sizes,
    faithfulness,
)
from lmxray.result import Attribution


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def llama():
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


def oracle_logprob(model, ids, target):
    """One unpadded HF forward: log p(target | ids)."""
    with torch.no_grad():
        logits = model.hf(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return float(torch.log_softmax(logits, -1)[target])


def hand_attribution(model, prompt, target, scores_prompt):
    """An Attribution with hand-chosen scores (one target token), scored by the model."""
    p_ids = model.encode(prompt)
    t_ids = model.encode_target(target)[:1]
    assert len(scores_prompt) == len(p_ids)
    scores = np.array([list(scores_prompt) + [np.nan]], dtype=np.float32)
    lp = oracle_logprob(model, p_ids, t_ids[0])
    return Attribution(
        source_tokens=model.token_strings(p_ids + t_ids), target_tokens=model.token_strings(t_ids),
        scores=scores, target_scores=np.array([lp]), method="hand", model_name=model.name,
        info={"target_fn": "logprob"}, source_ids=p_ids + t_ids, target_ids=t_ids,
    )


# ----------------------------------------------------------------------------- hand numbers
def test_bin_sizes_by_hand():
    assert bin_sizes(10, (1, 5, 10, 20, 50)) == [1, 1, 1, 2, 5]
    assert bin_sizes(30, (1, 5, 10, 20, 50)) == [1, 2, 3, 6, 15]  # 10% of 30 is 3, not 4
    assert bin_sizes(3, (1, 5, 10, 20, 50)) == [1, 1, 1, 1, 2]
    assert bin_sizes(200, (1, 5, 10, 20, 50)) == [2, 10, 20, 40, 100]
    assert bin_sizes(7, (100,)) == [7]
    assert bin_sizes(0, (1, 5)) == []


def test_curve_sizes_and_auc_by_hand():
    assert curve_sizes(10, 20) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10]
    assert curve_sizes(4, 4) == [0, 1, 2, 3, 4]
    assert curve_sizes(3, 2) == [0, 2, 3]  # round half up: 1.5 -> 2
    # trapezoid over [0, 1]: points 1, 0.5, 0 at x = 0, 0.5, 1 -> 0.5*(0.75) + 0.5*(0.25) = 0.5
    auc = Faithfulness._auc(np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(auc, [0.5, 1.0])


def test_metrics_equal_hand_removal_sets_on_tiny_model(gpt2):
    """Every number against a plain loop of single forwards over removal sets written by hand."""
    prompt = "The capital of Italy is Rome and"
    p_ids = gpt2.encode(prompt)
    n_p = len(p_ids)  # BOS + 7 content tokens
    assert n_p == 8, gpt2.token_strings(p_ids)
    # position 0 is BOS (kept); importance order by hand: 5, 2, 7, 1, 3, 6, 4
    s = [9.0, 3.0, 6.0, 2.0, 0.0, 7.0, 1.0, 4.0]
    a = hand_attribution(gpt2, prompt, " the", s)
    y = a.target_ids[0]
    order = [5, 2, 7, 1, 3, 6, 4]
    n = 7
    # bins 1,5,10,20,50 % of 7 tokens -> ceil: 1, 1, 1, 2, 4
    ks = [1, 1, 1, 2, 4]
    assert bin_sizes(n, (1, 5, 10, 20, 50)) == ks

    def p_without(drop):
        return math.exp(oracle_logprob(gpt2, [t for i, t in enumerate(p_ids) if i not in drop], y))

    p0 = p_without(set())
    f = faithfulness(gpt2, a, n_steps=7)
    comp = [p0 - p_without(set(order[:k])) for k in ks]
    suff = [p0 - p_without(set(order[k:])) for k in ks]
    np.testing.assert_allclose(f.full, [p0], rtol=1e-5)
    np.testing.assert_allclose(f.comprehensiveness[0], comp, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(f.sufficiency[0], suff, rtol=1e-4, atol=1e-9)
    summ = f.summary()
    assert summ["comprehensiveness"] == pytest.approx(np.mean(comp), rel=1e-4, abs=1e-9)
    assert summ["sufficiency"] == pytest.approx(np.mean(suff), rel=1e-4, abs=1e-9)
    assert summ["comprehensiveness@20%"] == pytest.approx(comp[3], rel=1e-4, abs=1e-9)
    # 7 curve steps over 7 tokens: one token per step
    dele = [p_without(set(order[:k])) for k in range(8)]
    ins = [p_without(set(order[k:])) for k in range(8)]
    np.testing.assert_allclose(f.deletion[0], dele, rtol=1e-4)
    np.testing.assert_allclose(f.insertion[0], ins, rtol=1e-4)
    assert summ["deletion_auc"] == pytest.approx((sum(dele) - (dele[0] + dele[-1]) / 2) / 7, rel=1e-4)
    assert summ["insertion_auc"] == pytest.approx((sum(ins) - (ins[0] + ins[-1]) / 2) / 7, rel=1e-4)

    def logit(p):
        return math.log(p) - math.log1p(-p)

    lo = [logit(p0 - c) - logit(p0) for c in comp]
    np.testing.assert_allclose(f.log_odds[0], lo, rtol=1e-3, atol=1e-6)

    def rank(ids):
        with torch.no_grad():
            logits = gpt2.hf(input_ids=torch.tensor([ids])).logits[0, -1]
        return int((logits > logits[y]).sum())

    assert f.rank_before[0] == rank(p_ids)
    assert f.rank_after[0] == rank([t for i, t in enumerate(p_ids) if i != 5])


def test_baseline_replacement_and_logprob_space(llama):
    prompt = "k3=blue k7=red k1"
    a = hand_attribution(llama, prompt, "=", np.arange(len(llama.encode(prompt)), dtype=float))
    p_ids, y = a.source_ids[:-1], a.target_ids[0]
    pad = llama.tokenizer.pad_token_id
    f = faithfulness(llama, a, removal="baseline", baseline="pad", space="logprob",
                     metrics=["comprehensiveness"], bins=(100,))
    # 100%: every non-special token replaced by <pad>, positions kept, BOS kept
    replaced = [p_ids[0]] + [pad] * (len(p_ids) - 1)
    expect = oracle_logprob(llama, p_ids, y) - oracle_logprob(llama, replaced, y)
    np.testing.assert_allclose(f.comprehensiveness[0], [expect], rtol=1e-4, atol=1e-6)
    assert f.info["removal"] == "baseline" and "pad" in f.info["baseline"]
    assert f.sufficiency is None and f.deletion is None and "sufficiency" not in f.summary()


# ----------------------------------------------------------------------------- axioms
def test_curve_endpoints_and_full_bins(gpt2):
    a = gpt2.attribute("When Mary and John went to the store,", target=" John gave",
                       method="saliency")
    f = faithfulness(gpt2, a, bins=(1, 50, 100))
    np.testing.assert_allclose(f.deletion[:, 0], f.full, rtol=1e-6)  # nothing removed
    np.testing.assert_allclose(f.insertion[:, -1], f.full, rtol=1e-6)  # everything back
    np.testing.assert_allclose(f.deletion[:, -1], f.insertion[:, 0], rtol=1e-6)
    np.testing.assert_allclose(f.sufficiency[:, -1], 0.0, atol=1e-7)  # keep all = full
    np.testing.assert_allclose(f.comprehensiveness[:, -1], f.full - f.insertion[:, 0], rtol=1e-5)
    # step 1 may also remove the earlier target token: one more candidate than step 0
    assert f.n_candidates[1] == f.n_candidates[0] + 1
    fp = faithfulness(gpt2, a, sources="prompt", metrics=["deletion"])
    assert fp.n_candidates[1] == fp.n_candidates[0]


def test_occlusion_is_optimal_for_its_own_top1_removal(gpt2):
    """Removing occlusion's top token is, by construction, the largest single-token drop."""
    prompts = ["The capital of France is", "A dog is not a fox. The quick brown"]
    targets = [" Paris", " fox"]
    occ = gpt2.attribute(prompts, target=targets, method="occlusion")
    rnd = gpt2.attribute(prompts, target=targets, method="random")
    fo = faithfulness(gpt2, occ, bins=(1,), metrics=["comprehensiveness"])
    fr = faithfulness(gpt2, rnd, bins=(1,), metrics=["comprehensiveness"])
    for a, o, r in zip(occ, fo, fr, strict=True):
        drops = []
        ids = a.source_ids[: a.prompt_length]
        for pos in range(1, len(ids)):
            kept = [t for i, t in enumerate(ids) if i != pos]
            drops.append(o.full[0] - math.exp(oracle_logprob(gpt2, kept, a.target_ids[0])))
        assert o.comprehensiveness[0, 0] == pytest.approx(max(drops), rel=1e-4, abs=1e-9)
        assert o.comprehensiveness[0, 0] >= r.comprehensiveness[0, 0] - 1e-9


def test_batched_equals_unbatched_and_chunking(gpt2):
    prompts = ["The capital of France is", "Berlin is in Germany, Madrid", "k3=blue"]
    targets = [" Paris. The", " is in", " k7"]
    attrs = gpt2.attribute(prompts, target=targets, method="input_x_gradient")
    together = faithfulness(gpt2, attrs)
    alone = [faithfulness(gpt2, a, internal_batch_size=7) for a in attrs]
    for x, y in zip(together, alone, strict=True):
        for k, v in x.summary().items():
            w = y.summary()[k]
            assert (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, rel=1e-5, abs=2e-6), k


def test_model_left_as_it_was(gpt2):
    a = gpt2.attribute("The capital of France is", target=" Paris", method="saliency")
    ref = faithfulness(gpt2, a, metrics=["deletion"]).deletion
    gpt2.hf.train()
    try:
        again = faithfulness(gpt2, a, metrics=["deletion"]).deletion
        assert gpt2.hf.training  # restored to the user's mode
    finally:
        gpt2.hf.eval()
    np.testing.assert_allclose(again, ref, rtol=1e-6)  # dropout was off while scoring


def test_serialisable(gpt2):
    import json

    a = gpt2.attribute("The capital of France is", target=" Paris", method="random")
    d = faithfulness(gpt2, a).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["format"] == "lmxray.faithfulness/1" and len(d["deletion"][0]) == 21


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"removal": "mask"}, "removal must be"),
        ({"removal": "baseline", "baseline": "zero"}, "token baseline"),
        ({"bins": (0, 10)}, "bins must be"),
        ({"bins": ("a",)}, "bins must be"),
        ({"n_steps": 0}, "n_steps"),
        ({"space": "logit"}, "space must be"),
        ({"metrics": ["aopc"]}, "unknown faithfulness metric"),
        ({"rank_by": "magnitude"}, "rank_by"),
        ({"sources": "target"}, "sources must be"),
    ],
)
def test_bad_parameters(gpt2, kwargs, match):
    a = gpt2.attribute("The capital of France is", target=" Paris", method="random")
    with pytest.raises(InputError, match=match):
        faithfulness(gpt2, a, **kwargs)


def test_bad_attributions(gpt2, llama):
    a = gpt2.attribute("The capital of France is", target=" Paris", method="random")
    with pytest.raises(InputError, match="no attribution"):
        faithfulness(gpt2, [])
    with pytest.raises(InputError, match="expected an lmxray Attribution"):
        faithfulness(gpt2, "text")  # type: ignore[arg-type]
    no_ids = Attribution(a.source_tokens, a.target_tokens, a.scores, a.target_scores, "x")
    with pytest.raises(InputError, match="no token ids"):
        faithfulness(gpt2, no_ids)
    with pytest.raises(InputError, match="model that produced it"):
        faithfulness(llama, a)  # same tokenizer, other weights
    c = gpt2.attribute("The capital of Italy is", target=" Rome", foil=" and", method="random")
    with pytest.raises(InputError, match="foil"):
        faithfulness(gpt2, c)
