"""Named hook sites: every family's sites exist, have the documented shapes, and are the tensors
the block really reads and adds (resid_post = resid_pre + attn.out + mlp.out; logits = lm_head)."""

from __future__ import annotations

import functools

import pytest
import torch

import lmxray
from conftest import FAMILIES, build_tiny, tiny_tokenizer
from lmxray.errors import InputError, MethodError
from lmxray.hooks import check_additive, run_with_cache
from lmxray.sites import FAMILIES as TABLE
from lmxray.sites import LAYER_KINDS, SiteMap, site_map


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    yield
    torch.set_num_threads(n)


@functools.cache
def tiny(family: str) -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


PROMPTS = ["The capital of France is", "Mary and John"]


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_have_documented_shapes(family):
    m = tiny(family)
    sm = site_map(m)
    assert sm.family == family and sm.n_layers == 2
    assert set(sm.kinds()) == {"embed", "final_norm", "logits", *LAYER_KINDS}
    c = run_with_cache(m, PROMPTS, cache="all")
    B, L = c.input_ids.shape
    d, H, V = m.d_model, m.n_heads, m.vocab_size
    d_mlp = {"gpt2": 4 * d}.get(family, 64)
    assert c["embed"].shape == (B, L, d)
    assert c["final_norm"].shape == (B, L, d)
    assert c["logits"].shape == (B, L, V)
    for i in range(2):
        p = f"layers.{i}."
        for kind in ("resid_pre", "resid_post", "attn.out", "mlp.out"):
            assert c[p + kind].shape == (B, L, d), (family, kind)
        assert c[p + "attn.head_out"].shape == (B, L, H, d // H)
        assert c[p + "attn.pattern"].shape == (B, H, L, L)
        assert c[p + "mlp.hidden"].shape == (B, L, d_mlp)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_are_what_the_block_computes(family):
    m = tiny(family)
    c = run_with_cache(m, PROMPTS, cache="all")
    assert max(check_additive(m).values()) < 1e-5
    # block i+1 reads what block i wrote; the logits site is the model's output
    assert torch.equal(c["layers.1.resid_pre"], c["layers.0.resid_post"])
    assert torch.equal(c["logits"], c.logits)
    sm = site_map(m)
    with torch.no_grad():
        # the final norm feeds the unembedding; o_proj(head_out) is the attention output
        assert torch.allclose(sm.unembed[-1](c["final_norm"]), c.logits, atol=1e-5)
        for i in range(2):
            z = c[f"layers.{i}.attn.head_out"]
            out = sm[f"layers.{i}.attn.head_out"].module(z.flatten(-2))
            assert torch.allclose(out, c[f"layers.{i}.attn.out"], atol=1e-6)
    # attention patterns are causal distributions over real keys
    pat = c["layers.0.attn.pattern"]
    mask = c.attention_mask.bool()
    sums = pat.sum(-1)[:, 0]
    assert torch.allclose(sums[mask], torch.ones_like(sums[mask]), atol=1e-5)
    assert float(torch.triu(pat[1, :, 3:, 3:], diagonal=1).abs().max()) == 0.0


def test_names_and_patterns():
    sm = site_map(tiny("llama"))
    assert sm.canonical("layers.-1.resid_post") == "layers.1.resid_post"
    assert sm.expand("resid_post") == ["layers.0.resid_post", "layers.1.resid_post"]
    assert sm.expand(["layers.*.mlp.out", "embed"]) == ["embed", "layers.0.mlp.out", "layers.1.mlp.out"]
    assert len(sm.expand("all")) == len(sm.names())
    assert sm.names()[0] == "embed" and sm.names()[-1] == "logits"
    assert sm.name("attn.out", -1) == "layers.1.attn.out"
    assert "layers.0.attn.head_out" in sm and "layers.9.resid_pre" not in sm
    with pytest.raises(InputError, match="out of range"):
        sm["layers.2.resid_pre"]
    with pytest.raises(InputError, match="unknown site kind"):
        sm.expand("layers.0.attn.bogus")
    with pytest.raises(InputError, match="matches no site"):
        sm.expand("layers.*.nothing*")
    with pytest.raises(InputError):
        sm.expand([""])
    with pytest.raises(InputError, match="needs a layer"):
        sm.name("resid_pre")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_generic_fallback_finds_the_same_modules(family, monkeypatch):
    m = tiny(family)
    table = SiteMap(m.hf)
    monkeypatch.delitem(TABLE, family)
    generic = SiteMap(m.hf)
    assert generic.family == "generic"
    for name in table.names():
        assert generic[name].module is table[name].module, name
        assert generic[name].mode == table[name].mode


def test_generic_fallback_reports_missing_roles(monkeypatch):
    m = tiny("opt")  # OPT has no 'mlp' module: the fallback cannot name the MLP output
    monkeypatch.delitem(TABLE, "opt")
    generic = SiteMap(m.hf)
    assert "layers.0.resid_post" in generic and "layers.0.attn.head_out" in generic
    with pytest.raises(MethodError, match="not available"):
        generic["layers.0.mlp.out"]


def _extra(model_type: str, **cfg):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=1, eos_token_id=2,
                                  pad_token_id=3, **cfg)
    return lmxray.load(model=AutoModelForCausalLM.from_config(config).eval(), tokenizer=tok)


EXTRA = {
    "qwen3": dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64),
    "gemma2": dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=64),
    "gptj": dict(n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=64),
    "phi": dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                max_position_embeddings=64),
}


@pytest.mark.parametrize("model_type", sorted(EXTRA))
def test_more_families_from_the_table(model_type):
    """Families beyond the six fixtures: sandwich norms (gemma2), parallel blocks (gptj, phi)."""
    m = _extra(model_type, **EXTRA[model_type])
    sm = site_map(m)
    assert sm.family == model_type
    assert max(check_additive(m).values()) < 1e-4
    c = run_with_cache(m, PROMPTS, cache=["attn.head_out", "final_norm"])
    assert c["layers.1.attn.head_out"].shape[2] == m.n_heads
