"""The hook layer: identity interventions change nothing, hooks always go away, positions mean
tokens (through left padding and KV caches), every op does what it says, caches round-trip."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import lmxray
from conftest import FAMILIES, build_tiny
from lmxray.errors import FormatError, InputError
from lmxray.hooks import (
    ActivationCache,
    add,
    capture,
    intervene,
    mean_ablate,
    patch,
    replace,
    run_with_cache,
    scale,
    scatter,
    zero,
)
from lmxray.internals._sweep import _cache_kw
from lmxray.sites import site_map


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


def n_hooks(m) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.hf.modules())


def logits(m, ids, **kw) -> torch.Tensor:
    ids = torch.tensor([ids])
    with torch.no_grad():
        return m.forward(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits[0]


P = "When Mary and John went to the store, John gave a drink to"


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_interventions_leave_logits_unchanged(family):
    m = tiny(family)
    ids = m.encode(P)
    base = logits(m, ids)
    writable = [n for n in site_map(m).names() if not n.endswith("attn.pattern")]
    with intervene(m, {n: (lambda x: x.clone()) for n in writable}):
        same = logits(m, ids)
    with intervene(m, {n: add(0.0) for n in writable}):
        same2 = logits(m, ids)
    assert torch.equal(base, same) and torch.equal(base, same2)
    assert n_hooks(m) == 0


def test_hooks_are_removed_when_the_forward_raises():
    m = tiny()

    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), intervene(m, {"layers.1.mlp.out": boom}):
        m.logits(P)
    assert n_hooks(m) == 0
    with pytest.raises(InputError):
        run_with_cache(m, P, cache=["resid_post"], interventions={"layers.0.resid_post": lambda x: x[:, :1]})
    assert n_hooks(m) == 0
    assert m.hf.config._attn_implementation == "sdpa"  # eager switch for patterns was undone


def test_model_state_is_untouched():
    m = tiny()
    flags = [p.requires_grad for p in m.hf.parameters()]
    run_with_cache(m, P, cache="all", grad=True)
    with intervene(m, {"embed": zero(positions=[1])}):
        m.logits(P)
    assert [p.requires_grad for p in m.hf.parameters()] == flags
    assert all(p.grad is None for p in m.hf.parameters())
    assert not m.hf.training


def test_zero_ablating_every_head_leaves_the_output_bias():
    m = tiny("gpt2")  # GPT-2's c_proj has a bias
    c = run_with_cache(m, P, cache=["layers.0.attn.out"], interventions={"layers.0.attn.head_out": zero()})
    bias = m.hf.transformer.h[0].attn.c_proj.bias
    assert torch.allclose(c["layers.0.attn.out"], bias.expand_as(c["layers.0.attn.out"]), atol=1e-6)
    c2 = run_with_cache(m, P, cache=["layers.0.attn.head_out"],
                        interventions={"layers.0.attn.head_out": zero(heads=[1, 3], positions=[2, -1])})
    z = c2["layers.0.attn.head_out"][0]
    clean = run_with_cache(m, P, cache=["layers.0.attn.head_out"])["layers.0.attn.head_out"][0]
    touched = torch.zeros_like(z, dtype=torch.bool)
    touched[[2, -1]] = False
    for p in (2, z.shape[0] - 1):
        for h in (1, 3):
            touched[p, h] = True
    assert float(z[touched].abs().max()) == 0.0
    assert torch.equal(z[~touched], clean[~touched])


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_positions_are_tokens_through_left_padding(family):
    m = tiny(family)
    short, long_ = "Mary and John", P
    vec = torch.linspace(-1, 1, m.d_model)
    spec = {"layers.0.resid_post": add(vec, positions=[1, 2]), "layers.1.mlp.out": scale(0.5, positions=[-1])}
    with intervene(m, spec):
        alone = logits(m, m.encode(short))
        ids, mask, pos = m.pad_batch([m.encode(long_), m.encode(short)])
        with torch.no_grad():
            batched = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    n = len(m.encode(short))
    assert torch.allclose(batched[1, -n:], alone, atol=1e-5)
    # and the intervention did something
    assert not torch.allclose(alone, logits(m, m.encode(short)), atol=1e-4)


def test_positions_are_tokens_under_a_kv_cache():
    m = tiny("llama")
    ids = m.encode(P)
    k = 6
    spec = {"layers.0.resid_pre": add(torch.ones(m.d_model), positions=[k + 1, k + 3])}
    with intervene(m, spec):
        full = logits(m, ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            out = m.hf(input_ids=x[:, :k], use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            rest = m.hf(input_ids=x[:, k:], attention_mask=torch.ones_like(x), use_cache=True,
                        **{_cache_kw(m): cache}).logits[0]
    assert torch.allclose(full[k:], rest, atol=1e-5)


def test_patch_from_a_cache_with_other_padding():
    m = tiny("gpt2")
    a, b = "The capital of France is", "The capital of Italy is"
    src = run_with_cache(m, [P, a], cache=["layers.1.resid_pre"])  # a is left padded in src
    one = run_with_cache(m, a, cache=["layers.1.resid_pre"])
    with intervene(m, {"layers.1.resid_pre": patch(one, positions=[4])}):
        expect = logits(m, m.encode(b))
    with intervene(m, {"layers.1.resid_pre": patch(src, positions=[4], rows=[1])}):
        ids, mask, pos = m.pad_batch([m.encode(P), m.encode(b)])
        with torch.no_grad():
            got = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits[1, -len(m.encode(b)):]
    assert torch.allclose(expect, got, atol=1e-5)
    # patching everything from the source reproduces the source run
    with intervene(m, {"layers.1.resid_pre": one}):
        assert torch.allclose(logits(m, m.encode(b)), one.logits[0], atol=1e-5)


def test_ops_replace_add_scale_mean_scatter():
    m = tiny("llama")
    site = "layers.0.mlp.out"
    base = run_with_cache(m, [P, "Mary and John"], cache=[site])[site]
    d = m.d_model
    v = torch.arange(d, dtype=torch.float32)

    def after(op):
        return run_with_cache(m, [P, "Mary and John"], cache=[site], interventions={site: op})[site]

    out = after(replace(v, positions=[0], rows=[1]))
    pad = int(run_with_cache(m, [P, "Mary and John"], cache=[]).pad[1])
    assert torch.equal(out[1, pad], v) and torch.equal(out[0], base[0])
    assert torch.allclose(after(add(v, coef=2.0)), base + 2 * v)
    assert torch.allclose(after(scale(3.0, rows=[0]))[0], 3 * base[0])
    mean = after(mean_ablate())
    real = run_with_cache(m, [P, "Mary and John"], cache=[]).attention_mask.bool()
    assert torch.allclose(mean[0, 0], base[real].mean(0), atol=1e-6)
    assert torch.allclose(after(mean_ablate(v))[0, 3], v)
    sc = after(scatter(rows=[0, 1], positions=[1, 2], values=torch.stack([v, -v]), mode="add"))
    assert torch.allclose(sc[0, 1], base[0, 1] + v) and torch.allclose(sc[1, pad + 2], base[1, pad + 2] - v)
    heads = run_with_cache(m, P, cache=["layers.1.attn.head_out"], interventions={
        "layers.1.attn.head_out": scatter(rows=[0, 0], positions=[3, 4], heads=[2, 0], values=torch.ones(2, 8))})
    z = heads["layers.1.attn.head_out"][0]
    assert torch.equal(z[3, 2], torch.ones(8)) and torch.equal(z[4, 0], torch.ones(8))


def test_callables_and_bad_interventions():
    m = tiny()
    seen = {}

    def two(x, name):
        seen[name] = x.shape

    def three(x, name, ctx):
        seen["past"] = ctx.past

    with intervene(m, {"layers.0.attn.out": two, "layers.1.attn.out": three, "embed": "zero"}):
        m.logits(P)
    assert seen["layers.0.attn.out"][-1] == m.d_model and seen["past"] == 0
    for bad, msg in [
        ({"layers.0.attn.pattern": zero()}, "read-only"),
        ({"layers.0.resid_post": zero(heads=[0])}, "per-head"),
        ({"layers.0.attn.head_out": zero(heads=[9])}, "out of range"),
        ({"layers.0.resid_post": zero(rows=[5])}, "out of range"),
        ({"layers.0.resid_post": "bogus"}, "unknown intervention"),
        ({"layers.0.resid_post": object()}, "cannot intervene"),
        ({"layers.0.resid_post": lambda x: x[..., :3]}, "return a tensor"),
    ]:
        with pytest.raises(InputError, match=msg):
            with intervene(m, bad):
                m.logits(P)
        assert n_hooks(m) == 0
    with pytest.raises(InputError, match="nothing to run"):
        run_with_cache(m, [], cache=["embed"])
    with pytest.raises(InputError):
        with intervene(m, ["layers.0.resid_post"]):  # type: ignore[arg-type]
            pass


def test_batched_cache_equals_one_by_one():
    m = tiny("gpt_neox")
    prompts = [P, "Mary and John", "The quick brown fox"]
    c = run_with_cache(m, prompts, cache="all")
    for i, p in enumerate(prompts):
        one = run_with_cache(m, p, cache="all")
        for name in ("layers.1.resid_post", "layers.0.attn.head_out", "layers.1.mlp.hidden"):
            assert torch.allclose(c.tokens_of(name, i), one.tokens_of(name, 0), atol=1e-5), name
        assert torch.allclose(c.tokens_of("layers.1.attn.pattern", i), one["layers.1.attn.pattern"][0], atol=1e-6)
    assert c.tokens[1] == m.token_strings(m.encode(prompts[1]))
    assert c.stack("resid_post").shape[:2] == (2, 3)


def test_cache_keeps_the_graph_and_records_after_interventions():
    m = tiny()
    c = run_with_cache(m, P, cache=["layers.0.resid_post"], grad=True,
                       interventions={"layers.0.resid_post": zero(positions=[0])})
    assert c["layers.0.resid_post"].requires_grad
    assert float(c["layers.0.resid_post"][0, 0].detach().abs().max()) == 0.0
    with capture(m, ["layers.1.attn.out"]) as acts:
        m.logits(P)
    assert acts["layers.1.attn.out"].shape[-1] == m.d_model


def test_cache_save_load_roundtrip(tmp_path):
    m = tiny()
    c = run_with_cache(m, ["Mary and John", P], cache=["resid_post", "layers.0.attn.head_out"])
    path = c.save(tmp_path / "c.safetensors")
    back = ActivationCache.load(path)
    assert set(back) == set(c)
    for k in c:
        assert torch.equal(back[k], c[k])
    assert back.tokens == c.tokens and torch.equal(back.logits, c.logits) and back.n_layers == 2
    assert torch.equal(back["layers.-1.resid_post"], c["layers.1.resid_post"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FormatError):
        ActivationCache.load(tmp_path / "bad.safetensors")
    with pytest.raises(InputError):
        ActivationCache.load(tmp_path / "missing.safetensors")
    with pytest.raises(InputError):
        c.save(tmp_path / "no" / "dir.safetensors")
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(KeyError):
        c["layers.0.mlp.out"]
    np.testing.assert_allclose(c.mean("layers.0.resid_post").numpy(),
                               c["layers.0.resid_post"][c.attention_mask.bool()].mean(0).numpy(), rtol=1e-6)
