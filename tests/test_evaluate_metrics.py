"""Plausibility (ERASER token P/R/F1, IOU-F1, AUPRC, ROC-AUC), ground-truth recovery
(hit rates, MRR, evidence verification) and the Adebayo randomisation sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.evaluate.groundtruth import evidence_recovery, verify_evidence
from lmxray.evaluate.plausibility import iou_f1, plausibility, token_plausibility
from lmxray.evaluate.sanity import randomisation_stages, rank_correlation, sanity_check
from lmxray.result import Attribution


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


def scored(tokens, scores, n_target=1):
    """An Attribution over ``tokens`` (the last ``n_target`` are targets), one score row."""
    n = len(tokens)
    row = list(scores) + [np.nan] * (n - len(scores))
    return Attribution(
        source_tokens=tokens, target_tokens=tokens[n - n_target:],
        scores=np.array([row] * n_target, dtype=np.float32)[:n_target],
        target_scores=np.zeros(n_target), method="hand", source_ids=list(range(n)),
        target_ids=list(range(n - n_target, n)),
    )


# ----------------------------------------------------------------------------- plausibility
def test_token_metrics_by_hand():
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.2, 0.7])
    truth = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    out = token_plausibility(scores, truth)  # k = 3 -> top: 0, 2, 5
    assert out["token_precision"] == pytest.approx(2 / 3)
    assert out["token_recall"] == pytest.approx(2 / 3)
    assert out["token_f1"] == pytest.approx(2 / 3)
    # ranks: 0.9 T, 0.8 T, 0.7 F, 0.3 T, 0.2 F, 0.1 F ->
    # AP = (1/1 + 2/2 + 3/4) / 3
    assert out["average_precision"] == pytest.approx((1 + 1 + 0.75) / 3)
    # ROC-AUC: positive/negative pairs ordered right: 0.9>all3, 0.8>all3, 0.3>{0.2,0.1} -> 8/9
    assert out["roc_auc"] == pytest.approx(8 / 9)
    k1 = token_plausibility(scores, truth, k=1)
    assert (k1["token_precision"], k1["token_recall"]) == (1.0, pytest.approx(1 / 3))


def test_auprc_matches_sklearn_and_nan_when_one_class():
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=30), rng.random(30) < 0.3
    p, r, _ = precision_recall_curve(t.astype(int), s)
    assert token_plausibility(s, t)["auprc"] == pytest.approx(auc(r, p))
    out = token_plausibility(s, np.ones(30, dtype=bool))
    assert np.isnan(out["auprc"]) and np.isnan(out["roc_auc"])


def test_iou_f1_by_hand():
    truth = np.array([0, 1, 1, 1, 0, 0, 1, 0], dtype=bool)  # spans [1,4) and [6,7)
    pred = np.array([0, 0, 1, 1, 0, 1, 1, 0], dtype=bool)  # spans [2,4) IOU 2/3, [5,7) IOU 1/2
    out = iou_f1(truth, pred)
    assert (out["iou_precision"], out["iou_recall"], out["iou_f1"]) == (1.0, 1.0, 1.0)
    pred2 = np.array([1, 1, 0, 0, 0, 0, 0, 1], dtype=bool)  # [0,2) IOU 1/4, [7,8) IOU 0
    assert iou_f1(truth, pred2)["iou_f1"] == 0.0
    pred3 = np.array([0, 1, 1, 1, 0, 0, 0, 1], dtype=bool)  # [1,4) IOU 1, [7,8) 0 -> p 1/2 r 1/2
    assert iou_f1(truth, pred3)["iou_f1"] == pytest.approx(0.5)
    assert iou_f1(truth, pred3, threshold=0.0)["iou_precision"] == 1.0  # IOU 0 >= 0


def test_plausibility_of_attribution_skips_special_tokens(gpt2):
    ids = gpt2.encode("The capital of France is") + gpt2.encode_target(" Paris")[:1]
    toks = gpt2.token_strings(ids)
    # BOS scores highest but is a special token: the ranking starts at position 4
    a = scored(toks, [10.0, 0.0, 1.0, 0.5, 5.0, 0.2])
    a.source_ids = ids
    with_model = plausibility(a, [4], model=gpt2)
    assert with_model["token_precision"] == 1.0 and with_model["roc_auc"] == 1.0
    without = plausibility(a, [4])  # no model: BOS is a candidate and ranked first
    assert without["token_precision"] == 0.0
    assert plausibility(a, np.array([0, 0, 0, 0, 1, 0], bool), model=gpt2)["token_f1"] == 1.0
    with pytest.raises(InputError, match="outside the prompt"):
        plausibility(a, [6], model=gpt2)
    with pytest.raises(InputError, match="mask has"):
        plausibility(a, np.ones(3, bool))
    with pytest.raises(InputError, match="rank_by"):
        plausibility(a, [4], rank_by="size")


# ----------------------------------------------------------------------------- ground truth
def test_evidence_recovery_by_hand():
    a = scored([f"t{i}" for i in range(7)], [0.0, 0.5, 0.9, 0.1, 0.7, 0.3])
    assert evidence_recovery(a, [2]) == {"top1_hit": 1.0, "topk_hit": 1.0, "mrr": 1.0,
                                         "evidence_rank": 1.0}
    out = evidence_recovery(a, [1, 5])  # ranks: 2(.9) 4(.7) 1(.5) 5(.3) -> first evidence at 3
    assert out == {"top1_hit": 0.0, "topk_hit": 0.0, "mrr": pytest.approx(1 / 3), "evidence_rank": 3.0}
    assert evidence_recovery(a, [1, 5], k=3)["topk_hit"] == 0.5
    neg = scored([f"t{i}" for i in range(7)], [0.0, -0.9, 0.1, 0.2, 0.3, 0.4])
    assert evidence_recovery(neg, [1])["mrr"] == pytest.approx(1 / 6)
    assert evidence_recovery(neg, [1], rank_by="abs")["top1_hit"] == 1.0
    with pytest.raises(InputError, match="no rankable"):
        evidence_recovery(a, [])


def test_verify_evidence_against_a_loop(gpt2):
    """Verification by construction: the oracle is a loop of single forwards."""
    prompts = ["The capital of France is", "k3=blue k7=red k1"]
    targets = [" Paris", "="]
    evidence = [[4], [1, 2]]
    got = verify_evidence(gpt2, prompts, targets, evidence)

    def top(ids, y):
        with torch.no_grad():
            logits = gpt2.hf(input_ids=torch.tensor([ids + y[:-1]])).logits[0, -len(y):]
        return logits.argmax(-1).tolist() == y

    for prompt, target, ev, g in zip(prompts, targets, evidence, got, strict=True):
        ids, y = gpt2.encode(prompt), gpt2.encode_target(target)
        want = (top(ids, y) and not top([t for i, t in enumerate(ids) if i not in ev], y)
                and all(top([t for i, t in enumerate(ids) if i != j], y)
                        for j in range(1, len(ids)) if j not in ev))
        assert g == want
    # the random tiny model rarely predicts the target: at least one row must be unverified
    assert not all(got)


# ----------------------------------------------------------------------------- sanity
def test_stages_cover_every_parameter_once(gpt2):
    stages = randomisation_stages(gpt2.hf, gpt2.n_layers)
    names = [n for n, _ in stages]
    assert names == ["layer.1", "layer.0", "embeddings"]  # GPT-2 ties lm_head to wte
    ids = [id(p) for _, ps in stages for p in ps]
    assert len(ids) == len(set(ids)) == len(list(gpt2.hf.parameters()))
    llama_hf, tok = build_tiny("llama")
    llama = lmxray.load(model=llama_hf, tokenizer=tok)
    assert [n for n, _ in randomisation_stages(llama.hf, 2)][0] == "lm_head"


def test_rank_correlation_identity_and_reversal():
    a = scored([f"t{i}" for i in range(6)], [0.1, 0.4, 0.2, 0.9, 0.3])
    b = scored([f"t{i}" for i in range(6)], [-0.1, -0.4, -0.2, -0.9, -0.3])
    assert rank_correlation(a, a) == (pytest.approx(1.0), pytest.approx(1.0))
    assert rank_correlation(a, b) == (pytest.approx(-1.0), pytest.approx(1.0))


def test_sanity_gradient_passes_random_fails_model_untouched(gpt2):
    before = {k: v.clone() for k, v in gpt2.hf.state_dict().items()}
    prompts = ["The capital of France is Paris. The capital of Italy is",
               "When Mary and John went to the store, John gave a drink to"]
    targets = [" Rome", " Mary"]
    ixg = sanity_check(gpt2, prompts, targets, method="input_x_gradient")
    rnd = sanity_check(gpt2, prompts, targets, method="random")
    assert ixg.stages == ["layer.1", "layer.0", "embeddings"]
    assert ixg.passed, ixg.spearman
    assert not rnd.passed and np.allclose(rnd.spearman, 1.0)  # random scores ignore the weights
    ind = sanity_check(gpt2, prompts, targets, method="input_x_gradient", mode="independent")
    assert ind.passed is None and ind.spearman.shape == (3,)
    assert np.all(ind.spearman < 0.95)  # every single stage moves the ranks
    after = gpt2.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    import json

    json.dumps(ixg.to_dict(), allow_nan=False)
    with pytest.raises(InputError, match="mode must be"):
        sanity_check(gpt2, prompts, targets, method="saliency", mode="all")


def test_sanity_attention_ignores_an_untied_head():
    """Attention weights do not read the LM head: re-drawing it leaves their ranks unchanged."""
    hf, tok = build_tiny("llama")
    m = lmxray.load(model=hf, tokenizer=tok)
    r = sanity_check(m, ["When Mary and John went to the store, John gave a drink to"], [" Mary"],
                     method="attention")
    assert r.stages[0] == "lm_head" and r.spearman[0] == pytest.approx(1.0)
    assert r.spearman[1] < 0.9
