"""Logit lens and tuned lens: the last row is the model's own distribution (every family), ranks
and probabilities agree, a zero translator is the logit lens, training lowers held-out KL at every
layer but the last, and lenses round-trip through safetensors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import lmxray
from conftest import CORPUS, FAMILIES, build_tiny
from lmxray.errors import FormatError, InputError
from lmxray.hooks import run_with_cache
from lmxray.internals import LensResult, TunedLens, lens_kl, logit_lens, unembed


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


P = "The capital of France is Paris. The capital of Italy is"


@pytest.mark.parametrize("family", FAMILIES)
def test_last_row_is_the_model_output(family):
    m = tiny(family)
    c = run_with_cache(m, P, cache=["layers.-1.resid_post"])
    with torch.no_grad():
        assert torch.allclose(unembed(m, c["layers.-1.resid_post"]), c.logits, atol=1e-5)
    r = logit_lens(m, P, top_k=3)
    assert r.layers == ["embed", "0", "1"]
    assert float(np.abs(r.kl[-1]).max()) < 1e-6
    final = torch.softmax(m.logits(P).float(), -1)
    np.testing.assert_array_equal(r.top_ids[-1, :, 0], final.argmax(-1).numpy())
    np.testing.assert_allclose(r.top_probs[-1, :, 0], final.max(-1).values.numpy(), rtol=1e-5)
    # default target = each position's final top-1: rank 0 and top probability at the last row
    assert (r.target_rank[-1] == 0).all()


def test_target_probability_and_rank_agree():
    m = tiny("llama")
    r = logit_lens(m, P, " Rome", top_k=400)
    tid = m.encode_target(" Rome")[0]
    assert r.target == m.token_strings([tid])[0] and set(r.target_ids) == {tid}
    for i in range(len(r.layers)):
        for p in range(len(r.tokens)):
            rank = int(r.target_rank[i, p])
            assert r.top_ids[i, p, rank] == tid or r.top_probs[i, p, rank] == pytest.approx(r.target_prob[i, p], rel=1e-5)
            assert r.top_probs[i, p, rank] == pytest.approx(r.target_prob[i, p], rel=1e-4)
    assert ((r.kl >= 0) & np.isfinite(r.kl)).all()


def test_zero_tuned_lens_is_the_logit_lens():
    m = tiny()
    zero = TunedLens(m.n_layers, m.d_model)
    a, b = logit_lens(m, P), logit_lens(m, P, lens=zero)
    np.testing.assert_allclose(a.target_prob, b.target_prob, atol=1e-6)
    np.testing.assert_allclose(a.kl, b.kl, atol=1e-6)
    assert b.method == "tuned_lens"


def test_tuned_lens_beats_the_logit_lens_on_held_out_text(tmp_path):
    m = tiny("gpt2")
    texts = sorted(set(CORPUS))
    train = [t for i, t in enumerate(texts) if i != 1] * 3
    held_out = [texts[1], "The dog went to Madrid and Rome."]
    flags = [p.requires_grad for p in m.hf.parameters()]
    lens = TunedLens.fit(m, train, steps=60, batch_size=4, progress=False)
    assert [p.requires_grad for p in m.hf.parameters()] == flags
    assert all(p.grad is None for p in m.hf.parameters())
    kl_logit, kl_tuned = lens_kl(m, held_out), lens_kl(m, held_out, lens)
    assert kl_logit.shape == (3,)
    assert (kl_tuned[:-1] < kl_logit[:-1]).all(), (kl_logit, kl_tuned)
    assert kl_tuned[-1] == pytest.approx(0.0, abs=1e-7) and kl_logit[-1] == pytest.approx(0.0, abs=1e-7)
    assert lens.info["loss_last"] < lens.info["loss_first"]
    path = lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(path)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    np.testing.assert_allclose(lens_kl(m, held_out, back), kl_tuned, rtol=1e-6)
    with pytest.raises(InputError, match="layers"):
        logit_lens(tiny("llama"), P, lens=TunedLens(3, 32))
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(FormatError):
        TunedLens.load(tmp_path / "x.safetensors")
    with pytest.raises(InputError):
        TunedLens.load(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_result_roundtrip_and_pictures(tmp_path):
    m = tiny()
    r = logit_lens(m, P, " Rome")
    back = LensResult.load(r.save(tmp_path / "l.json"))
    np.testing.assert_allclose(back.target_prob, r.target_prob)
    assert back.top_tokens == r.top_tokens and back.target == r.target
    png = r.to_png(tmp_path / "l.png")
    assert png[:4] == b"\x89PNG" and (tmp_path / "l.png").read_bytes() == png
    assert "top-1 token" in r.to_html(tmp_path / "l.html")
    with pytest.raises(InputError):
        r.to_png(tmp_path / "x.png", what="nope")
    with pytest.raises(InputError):
        logit_lens(m, P, top_k=0)
    with pytest.raises(InputError):
        TunedLens.fit(m, [], progress=False)
