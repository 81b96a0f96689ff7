"""Head scores against a direct reading of the attention patterns, batching, and head ablation
(the batched one-head-per-copy sweep equals ablating each head on its own)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.hooks import run_with_cache
from lmxray.internals import (
    HeadScores,
    ablate_heads,
    head_ablation_effects,
    head_means,
    head_scores,
    random_heads_control,
    repeated_tokens,
    task_metric,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def tiny(family: str = "llama") -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


def test_repeated_tokens():
    m = tiny()
    seqs = repeated_tokens(m, 3, 7, seed=1)
    assert len(seqs) == 3 and all(len(s) == 15 for s in seqs)
    assert all(s[0] == m.tokenizer.bos_token_id and s[1:8] == s[8:] for s in seqs)
    assert len(set(seqs[0][1:8])) == 7  # no accidental repeats inside a half
    assert seqs == repeated_tokens(m, 3, 7, seed=1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scores_read_the_patterns_at_the_right_offsets(family):
    m = tiny(family)
    n = 6
    seqs = repeated_tokens(m, 4, n, seed=3)
    r = head_scores(m, n_seqs=4, seq_len=n, seed=3, batch_size=3)
    c = run_with_cache(m, seqs, cache="attn.pattern")
    pats = torch.stack([c[f"layers.{i}.attn.pattern"] for i in range(2)], 1)  # [B, layers, H, L, L]
    L = 2 * n + 1
    q2 = torch.arange(n + 1, L)  # queries in the second repeat
    prev = pats[:, :, :, torch.arange(1, L), torch.arange(0, L - 1)].mean((0, -1))
    dup = pats[:, :, :, q2, q2 - n].mean((0, -1))
    ind = pats[:, :, :, q2, q2 - n + 1].mean((0, -1))
    np.testing.assert_allclose(r.scores["previous_token"], prev.numpy(), atol=1e-6)
    np.testing.assert_allclose(r.scores["duplicate_token"], dup.numpy(), atol=1e-6)
    np.testing.assert_allclose(r.scores["induction"], ind.numpy(), atol=1e-6)
    assert r.info["query_counts"]["induction"] == 4 * n
    one = head_scores(m, seqs, batch_size=1)
    for k in r.scores:
        np.testing.assert_allclose(one.scores[k], r.scores[k], atol=1e-6)
    assert r.top("induction", 2)[0][1] == pytest.approx(float(r.scores["induction"].max()))


def test_scores_on_prompts_with_padding():
    m = tiny()
    prompts = ["a b c a b c", "The dog saw the dog"]
    r = head_scores(m, prompts, batch_size=2)
    s = head_scores(m, prompts[1:], batch_size=1)
    t = head_scores(m, prompts[:1], batch_size=1)
    counts = r.info["query_counts"]
    for k in r.scores:
        w1, w2 = s.info["query_counts"][k], t.info["query_counts"][k]
        assert counts[k] == w1 + w2
        np.testing.assert_allclose(r.scores[k], (s.scores[k] * w1 + t.scores[k] * w2) / (w1 + w2), atol=1e-6)


PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
           "k3=blue k7=red k1=green ; k7 =", "The quick brown fox jumps over the lazy"]
TARGETS = [" Paris", " Mary", " red", " dog"]


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_batched_single_head_ablation_equals_one_by_one(how):
    m = tiny("gpt2")
    eff = head_ablation_effects(m, PROMPTS, TARGETS, how=how, batch_size=6)
    assert eff.shape == (2, 4)
    for layer, h in [(0, 0), (0, 3), (1, 2)]:
        a = ablate_heads(m, [(layer, h)], PROMPTS, TARGETS, how=how)
        assert eff[layer, h] == pytest.approx(a["logprob"] - a["base_logprob"], abs=1e-5)
    assert np.abs(eff).max() > 0


def test_ablation_metric_and_controls():
    m = tiny("gpt2")
    base = task_metric(m, PROMPTS, TARGETS)
    none = ablate_heads(m, [], PROMPTS, TARGETS)
    assert none["logprob"] == pytest.approx(base["logprob"]) and 0 <= base["accuracy"] <= 1
    means = head_means(m, PROMPTS)
    assert means.shape == (2, 4, 8)
    ctrl = random_heads_control(m, 2, PROMPTS, TARGETS, n_draws=3, exclude=[(0, 0)], means=means)
    assert len(ctrl) == 3 and all((0, 0) not in c["heads"] and len(c["heads"]) == 2 for c in ctrl)
    with pytest.raises(InputError):
        random_heads_control(m, 9, PROMPTS, TARGETS)
    with pytest.raises(InputError, match="out of range"):
        ablate_heads(m, [(5, 0)], PROMPTS, TARGETS)
    with pytest.raises(InputError, match="zero"):
        ablate_heads(m, [(0, 0)], PROMPTS, TARGETS, how="resample")
    with pytest.raises(InputError):
        task_metric(m, PROMPTS, TARGETS[:2])


def test_roundtrip_and_pictures(tmp_path):
    m = tiny()
    r = head_scores(m, n_seqs=2, seq_len=5)
    r.ablation = np.zeros((2, 4), np.float32)
    back = HeadScores.load(r.save(tmp_path / "h.json"))
    np.testing.assert_allclose(back.scores["induction"], r.scores["induction"])
    assert back.ablation is not None
    assert r.to_png(tmp_path / "h.png")[:4] == b"\x89PNG" and (tmp_path / "h.png").exists()
    assert r.to_png(tmp_path / "a.png", "ablation")[:4] == b"\x89PNG" and (tmp_path / "a.png").exists()
    assert "induction score" in r.to_html()
    with pytest.raises(InputError):
        r.top("nope")
