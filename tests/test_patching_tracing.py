"""ROME causal tracing: axioms (no noise, tokens before the subject, the last state), equality with
a hand-written loop over noise samples, windows, subject location, and resumable dataset runs."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.hooks import intervene, patch, run_with_cache, scatter
from lmxray.internals import TraceResult, TraceSummary, causal_trace, subject_positions, trace_facts
from lmxray.internals import tracing as tracing_mod


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def tiny(family: str = "gpt2") -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


PROMPT = "Berlin is in Germany, Madrid is in"
SUBJ = "Madrid"


def test_subject_positions():
    m = tiny()
    pos = subject_positions(m, PROMPT, SUBJ)
    toks = m.token_strings(m.encode(PROMPT))
    assert "".join(toks[p] for p in pos).strip() == SUBJ
    assert subject_positions(m, PROMPT, (2, 4)) == [2, 3]
    assert subject_positions(m, PROMPT, [5, 3]) == [3, 5]
    for bad in ("Paris", (0, 99), [], 3.5):
        with pytest.raises(InputError):
            subject_positions(m, PROMPT, bad)


def test_axioms():
    m = tiny()
    r = causal_trace(m, PROMPT, SUBJ, n_samples=4, noise=20.0)
    first = r.subject[0]
    assert r.p_clean > 0 and r.p_corrupt != pytest.approx(r.p_clean)
    # restoring a state before the subject restores nothing: the noise has not reached it
    for k in r.restored:
        np.testing.assert_allclose(r.restored[k][:, :first], r.p_corrupt, rtol=1e-4)
    # the last block's output at the last token decides the answer
    assert r.restored["resid_post"][-1, -1] == pytest.approx(r.p_clean, rel=1e-4)
    assert r.total_effect == pytest.approx(r.p_clean - r.p_corrupt)
    assert r.indirect_effect().shape == (2, len(r.tokens))
    # no noise: every restoration gives the clean probability
    r0 = causal_trace(m, PROMPT, SUBJ, noise_std=0.0, n_samples=2)
    for k in r0.restored:
        np.testing.assert_allclose(r0.restored[k], r0.p_clean, rtol=1e-5)


def test_equals_a_hand_written_loop():
    m = tiny("llama")
    n_samples, std = 3, 0.5
    r = causal_trace(m, PROMPT, SUBJ, noise_std=std, n_samples=n_samples, seed=7, window=2, prefix_reuse=False)
    r2 = causal_trace(m, PROMPT, SUBJ, noise_std=std, n_samples=n_samples, seed=7, window=2, batch_size=5)
    for k in r.restored:
        np.testing.assert_allclose(r.restored[k], r2.restored[k], atol=1e-6)
    ids = m.encode(PROMPT)
    subj = subject_positions(m, PROMPT, SUBJ)
    noise = torch.randn((n_samples, len(subj), m.d_model), generator=torch.Generator().manual_seed(7)) * std
    clean = run_with_cache(m, PROMPT, cache="all")
    a = m.encode_target(r.answer)[0]

    def prob(extra):
        ps = []
        for s in range(n_samples):
            spec = {"embed": scatter(rows=[0] * len(subj), positions=subj, values=noise[s], mode="add"), **extra}
            with intervene(m, spec):
                ps.append(float(torch.softmax(m.logits(ids)[-1], -1)[a]))
        return float(np.mean(ps))

    assert r.p_corrupt == pytest.approx(prob({}), rel=1e-5)
    L = len(ids)
    for layer, pos in [(0, subj[-1]), (1, L - 2)]:
        got = prob({f"layers.{layer}.resid_post": patch(clean, positions=[pos])})
        assert r.restored["resid_post"][layer, pos] == pytest.approx(got, rel=1e-5)
    # a window of 2 around layer 1 restores MLP outputs of layers 0 and 1 (ROME's centring)
    got = prob({"layers.0.mlp.out": patch(clean, positions=[subj[-1]]),
                "layers.1.mlp.out": patch(clean, positions=[subj[-1]])})
    assert r.restored["mlp.out"][1, subj[-1]] == pytest.approx(got, rel=1e-5)


def test_buckets_and_roundtrip(tmp_path):
    m = tiny()
    r = causal_trace(m, PROMPT, SUBJ, n_samples=2, kinds=["resid_post"])
    b = r.buckets()
    ie = r.indirect_effect()
    f, l_ = r.subject[0], r.subject[1] - 1
    assert b.shape == (2, 6)
    np.testing.assert_allclose(b[:, 0], ie[:, f])
    np.testing.assert_allclose(b[:, 2], ie[:, l_])
    np.testing.assert_allclose(b[:, 5], ie[:, -1])
    back = TraceResult.load(r.save(tmp_path / "t.json"))
    np.testing.assert_allclose(back.restored["resid_post"], r.restored["resid_post"])
    assert back.subject == r.subject
    assert r.to_png(tmp_path / "t.png")[:4] == b"\x89PNG" and (tmp_path / "t.png").exists()
    assert "causal tracing" in r.to_html()


def test_trace_facts_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    m = tiny()
    top = m.token_strings([int(m.logits(PROMPT)[-1].argmax())])[0]
    facts = [(PROMPT, SUBJ, top), ("The capital of France is", "France", " Paris"),
             {"prompt": "Mary and John went", "subject": "John", "answer": top}]
    ck = tmp_path / "ck.jsonl"
    s = trace_facts(m, facts, n_samples=2, checkpoint=ck, progress=False)
    head, *rows = [json.loads(x) for x in ck.read_text().splitlines()]
    assert head["format"] == "lmxray.trace-checkpoint/1" and head["n_facts"] == 3
    assert len(rows) == 3 and s.n + s.n_skipped == 3 and s.n >= 1
    assert s.aie["resid_post"].shape == (2, 6)
    assert "AIE of restoring resid_post" in s.table()

    def fail(*a, **k):
        raise AssertionError("already traced facts must come from the checkpoint")

    monkeypatch.setattr(tracing_mod, "causal_trace", fail)
    with ck.open("a") as fh:
        fh.write('{"index": 9, "p_cl')  # an interrupted write is ignored
    s2 = trace_facts(m, facts, n_samples=2, checkpoint=ck, progress=False)
    np.testing.assert_allclose(s2.aie["resid_post"], s.aie["resid_post"])
    back = TraceSummary.load(s2.save(tmp_path / "s.json"))
    assert back.n == s.n
    with pytest.raises(InputError, match="knows none"):
        monkeypatch.undo()
        trace_facts(m, [("The capital of France is", "France", " zzzz")], progress=False)


def test_bad_arguments():
    m = tiny()
    with pytest.raises(InputError):
        causal_trace(m, PROMPT, SUBJ, kinds=["attn.head_out"])
    with pytest.raises(InputError):
        causal_trace(m, PROMPT, SUBJ, n_samples=0)
    with pytest.raises(InputError):
        trace_facts(m, [])
