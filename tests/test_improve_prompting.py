"""AMPLIFY: label scoring against a per-label loop, the same answers through a black-box scorer,
demonstration selection (wrong first, by MCS, round-robin over labels), rationale words from the
proxy's attributions, prompt layout, and the end-to-end experiment with its controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.blackbox import from_callable
from lmxray.errors import InputError
from lmxray.improve._common import Labelled, label_logprobs
from lmxray.improve.prompting import (
    AmplifyResult,
    Demo,
    amplify_experiment,
    build_prompt,
    predict,
    rationale_words,
    select_demos,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def m() -> lmxray.Model:
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


def blackbox(m: lmxray.Model):
    def fn(pairs):
        out = []
        for p, c in pairs:
            with torch.no_grad():
                lg = m.hf(input_ids=torch.tensor([p + c])).logits[0].float()
            lp = torch.log_softmax(lg, -1)
            out.append([float(lp[len(p) - 1 + j, t]) for j, t in enumerate(c)])
        return out

    return from_callable(fn, m.tokenizer, name="bb")


LABELS = [" Paris", " Rome", " dog and"]
POOL = [
    Labelled(p, t)
    for p, t in [
        ("The capital of France is", " Paris"),
        ("The capital of Italy is", " Rome"),
        ("A dog is not a fox. The", " dog and"),
        ("Berlin is in Germany, Madrid is in", " Rome"),
        ("The quick brown fox", " Paris"),
        ("great film, bad plot", " dog and"),
    ]
]


def test_label_logprobs_match_a_loop_and_the_blackbox(m):
    prompts = [e.prompt for e in POOL]
    lp = label_logprobs(m, prompts, LABELS)
    for i, p in enumerate(prompts):
        for j, lab in enumerate(LABELS):
            ids, t = m.encode(p), m.encode_target(lab)
            with torch.no_grad():
                lg = torch.log_softmax(
                    m.hf(input_ids=torch.tensor([ids + t])).logits[0].float(), -1
                )
            want = sum(float(lg[len(ids) - 1 + k, tok]) for k, tok in enumerate(t))
            assert lp[i, j] == pytest.approx(want, abs=1e-4)
    bb = blackbox(m)
    assert np.allclose(label_logprobs(bb, prompts, LABELS), lp, atol=1e-4)
    assert (predict(bb, prompts, LABELS)[0] == predict(m, prompts, LABELS)[0]).all()


def test_select_demos_wrong_first_by_mcs_and_round_robin(m):
    pred, lp = predict(m, [e.prompt for e in POOL], LABELS)
    gold = np.array([[lab.strip() for lab in LABELS].index(e.target.strip()) for e in POOL])
    rows = np.arange(len(POOL))
    other = lp.copy()
    other[rows, gold] = -np.inf
    mcs = other.max(1) - lp[rows, gold]
    picked = select_demos(m, POOL, LABELS, 3)
    assert len(picked) == 3
    # MCS > 0 exactly when the target model is wrong; reported values match
    for e, s, wrong in picked:
        i = POOL.index(e)
        assert s == pytest.approx(mcs[i]) and (s > 0) == (pred[i] != gold[i]) == wrong
    # one per label when three labels are available
    assert len({e.target for e, _, _ in picked}) == 3
    # within the picks, wrong ones come first, then by MCS
    keys = [(not w, -s) for _, s, w in picked]
    assert keys == sorted(keys)
    assert len(select_demos(m, POOL, LABELS, 20)) == len(POOL)


def test_rationale_words_follow_the_attribution(m):
    ex = POOL[:2]
    words = rationale_words(m, ex, k=2, method="occlusion")
    res = m.attribute([e.prompt for e in ex], [e.target for e in ex], method="occlusion")
    for w, r, e in zip(words, res, ex, strict=True):
        assert len(w) == 2 and all(any(ch.isalnum() for ch in x) for x in w)
        n = len(m.encode(e.prompt))
        s = r.scores[0, :n]
        toks = [t.strip() for t in r.source_tokens[:n]]
        best = max(
            (i for i in range(n) if toks[i] and any(ch.isalnum() for ch in toks[i]) and i > 0),
            key=lambda i: s[i],
        )
        assert w[0] == toks[best]
    with pytest.raises(InputError, match="at least 1"):
        rationale_words(m, ex, k=0)


def test_prompt_layout():
    d = [Demo(Labelled("Review: bad. Sentiment:", " negative"), 1.0, ("bad",), ("Review",))]
    q = "Review: good. Sentiment:"
    amp = build_prompt(d, q, condition="amplify", sep="\n\n")
    assert amp == (
        'The key words: "bad" are important clues to predict "negative" as the correct answer. '
        "Review: bad. Sentiment: negative\n\nReview: good. Sentiment:"
    )
    assert (
        build_prompt(d, q, condition="no rationale") == "Review: bad. Sentiment: negative\n\n" + q
    )
    assert '"Review"' in build_prompt(d, q, condition="random rationale")
    assert build_prompt(d, q, condition="zero-shot") == q
    with pytest.raises(InputError, match="condition"):
        build_prompt(d, q, condition="cot")


def test_experiment_end_to_end_with_a_blackbox_target(m, tmp_path):
    queries = POOL[::-1]
    res = amplify_experiment(
        blackbox(m), POOL, queries, proxy=m, labels=LABELS, n_shots=2, k=2, progress=False
    )
    assert set(res.accuracy) == {"zero-shot", "no rationale", "random rationale", "amplify"}
    assert all(0.0 <= v <= 1.0 for v in res.accuracy.values())
    # the same demonstrations serve every condition; rationale words come from the proxy
    assert len(res.demos) == 2 and all(d["words"] for d in res.demos)
    assert res.info["n_wrong_demos"] == sum(d["target_wrong"] for d in res.demos)
    assert res.example_prompt.endswith(queries[0].prompt)
    # accuracies equal a direct recount of the stored predictions
    gold = [[lab.strip() for lab in LABELS].index(e.target.strip()) for e in queries]
    for c, preds in res.info["predictions"].items():
        assert res.accuracy[c] == pytest.approx(np.mean(np.array(preds) == np.array(gold)))
    res.save(tmp_path / "a.json")
    assert AmplifyResult.load(tmp_path / "a.json").accuracy == res.accuracy
    assert "amplify" in res.table()
    with pytest.raises(InputError, match="two candidate labels"):
        amplify_experiment(m, POOL, queries, labels=[" Paris"], progress=False)
