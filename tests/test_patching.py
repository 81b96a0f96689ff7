"""Activation and attribution patching: the batched, prefix-reusing sweep equals a one-patch-per-
forward loop (the TransformerLens way), normalisation axioms hold, attribution patching is the
first-order term of the exact effect, and results round-trip."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import FormatError, InputError
from lmxray.hooks import add, intervene, patch, run_with_cache
from lmxray.internals import PatchingResult, activation_patching, attribution_patching, compare


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def tiny(family: str) -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
KINDS = ["resid_pre", "resid_post", "attn.out", "mlp.out", "attn.head_out"]


def naive(m, kind, layer, pos, head=None):
    """One forward per patch through the public intervene(): the reference."""
    src = run_with_cache(m, CLEAN, cache="all")
    a, b = m.encode_target(" Mary")[0], m.encode_target(" John")[0]

    def metric(ids, spec):
        with intervene(m, spec):
            lg = m.logits(ids)[-1]
        return float(lg[a] - lg[b])

    clean, corr = metric(m.encode(CLEAN), {}), metric(m.encode(CORRUPT), {})
    site = f"layers.{layer}.{kind}"
    op = patch(src, positions=None if pos is None else [pos], heads=None if head is None else [head])
    return (metric(m.encode(CORRUPT), {site: op}) - corr) / (clean - corr)


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_sweep_equals_one_patch_per_forward(family):
    m = tiny(family)
    r = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=KINDS)
    L = len(m.encode(CLEAN))
    assert r.effects["resid_pre"].shape == (2, L) and r.effects["attn.head_out"].shape == (2, 4, L)
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for _ in range(3):
            layer, pos = int(rng.integers(2)), int(rng.integers(L))
            if kind == "attn.head_out":
                h = int(rng.integers(4))
                assert r.effects[kind][layer, h, pos] == pytest.approx(naive(m, kind, layer, pos, h), abs=1e-4)
            else:
                assert r.effects[kind][layer, pos] == pytest.approx(naive(m, kind, layer, pos), abs=1e-4)
    ra = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["mlp.out", "attn.head_out"],
                             positions="all")
    assert ra.effects["mlp.out"].shape == (2, 1) and ra.effects["attn.head_out"].shape == (2, 4, 1)
    assert ra.effects["mlp.out"][1, 0] == pytest.approx(naive(m, "mlp.out", 1, None), abs=1e-4)
    assert ra.effects["attn.head_out"][0, 2, 0] == pytest.approx(naive(m, "attn.head_out", 0, None, 2), abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "mistral", "gpt_neox", "opt"])
def test_kv_prefix_reuse_is_exact_for_every_family(family):
    m = tiny(family)
    kinds = ["resid_pre", "mlp.out", "attn.head_out"]
    a = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=kinds, prefix_reuse=True)
    b = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=kinds, prefix_reuse=False)
    for k in kinds:
        np.testing.assert_allclose(a.raw[k], b.raw[k], atol=2e-5, err_msg=k)


def test_prefix_reuse_and_chunking_do_not_change_numbers():
    m = tiny("llama")
    ref = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=KINDS, prefix_reuse=False, batch_size=1000)
    for kw in ({"prefix_reuse": True}, {"batch_size": 3}, {"memory_budget": 200_000}):
        r = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=KINDS, **kw)
        for k in KINDS:
            np.testing.assert_allclose(r.effects[k], ref.effects[k], atol=2e-5, err_msg=f"{kw} {k}")


def test_normalisation_axioms():
    m = tiny("gpt2")
    r = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["resid_pre", "resid_post"])
    ids_c, ids_k = m.encode(CLEAN), m.encode(CORRUPT)
    same = [i for i, (a, b) in enumerate(zip(ids_c, ids_k, strict=True)) if a == b]
    diff = [i for i in range(len(ids_c)) if i not in same]
    # layer-0 residual at a position where both prompts hold the same token: nothing to restore
    # (to float32 rounding, amplified by the normalisation: the tiny model's gap is ~1e-3)
    assert np.abs(r.effects["resid_pre"][0, same]).max() < 1e-4
    # the last layer's output at the last position decides the logits: full restoration
    assert r.effects["resid_post"][-1, -1] == pytest.approx(1.0, abs=1e-4)
    ra = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["resid_pre"], positions="all")
    assert ra.effects["resid_pre"][0, 0] == pytest.approx(1.0, abs=1e-4)
    assert r.raw["resid_post"][-1, -1] == pytest.approx(r.clean_value, abs=1e-4)
    assert diff and r.answer == " Mary" and r.foil == " John"


def test_metrics():
    m = tiny("gpt2")
    p = activation_patching(m, CLEAN, CORRUPT, " Mary", sites=["resid_pre"], metric="prob")
    a = m.encode_target(" Mary")[0]
    assert p.clean_value == pytest.approx(float(torch.softmax(m.logits(CLEAN)[-1], -1)[a]), rel=1e-5)
    custom = activation_patching(m, CLEAN, CORRUPT, sites=["resid_pre"],
                                 metric=lambda lg: lg[:, a] * 2)
    lp = activation_patching(m, CLEAN, CORRUPT, " Mary", sites=["resid_pre"], metric="logprob")
    assert custom.metric == "custom" and lp.metric == "logprob"


def test_bad_inputs():
    m = tiny("gpt2")
    with pytest.raises(InputError, match="same number of tokens"):
        activation_patching(m, CLEAN, "Mary went", " Mary", " John")
    with pytest.raises(InputError, match="same metric"):
        activation_patching(m, CLEAN, CLEAN, " Mary", " John")
    with pytest.raises(InputError, match="cannot patch"):
        activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["attn.pattern"])
    with pytest.raises(InputError, match="positions"):
        activation_patching(m, CLEAN, CORRUPT, " Mary", " John", positions="some")
    with pytest.raises(InputError, match=r"to \[N\]"):
        activation_patching(m, CLEAN, CORRUPT, " Mary", metric=lambda x: x)
    with pytest.raises(InputError, match="unknown metric"):
        activation_patching(m, CLEAN, CORRUPT, " Mary", " John", metric="kl")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_attribution_patching_is_the_first_order_term(family):
    """AtP(site, pos) = d/de m(corrupt + e * (clean - corrupt) at that site) at e = 0, checked by
    a central finite difference through the public hook API."""
    m = tiny(family)
    ap = attribution_patching(m, CLEAN, CORRUPT, " Mary", " John")
    # the reference in float64: the tiny model's logit gap is ~1e-3, so a float32 central
    # difference carries rounding of a few percent (and differs between CPU kernels)
    hf, tok = build_tiny(family)
    m = lmxray.load(model=hf.double(), tokenizer=tok)
    src = run_with_cache(m, CLEAN, cache="all")
    cor = run_with_cache(m, CORRUPT, cache="all")
    a, b = m.encode_target(" Mary")[0], m.encode_target(" John")[0]
    gap = ap.clean_value - ap.corrupt_value
    eps = 1e-3
    for kind, layer, pos, head in [("resid_pre", 1, 9, None), ("attn.out", 0, -1, None),
                                   ("mlp.out", 1, 4, None), ("attn.head_out", 1, -1, 2)]:
        site = f"layers.{layer}.{kind}"
        delta = (src[site] - cor[site])[0, pos]
        if head is not None:
            delta = delta[head]
        vals = []
        for e in (eps, -eps):
            op = add(e * delta.double(), positions=[pos], heads=None if head is None else [head])
            with intervene(m, {site: op}):
                lg = m.logits(CORRUPT)[-1].double()
            vals.append(float(lg[a] - lg[b]))
        fd = (vals[0] - vals[1]) / (2 * eps) / gap
        est = ap.effects[kind][layer, head, pos] if head is not None else ap.effects[kind][layer, pos]
        assert est == pytest.approx(fd, abs=2e-3, rel=2e-2), (kind, est, fd)
    assert all(p.grad is None for p in m.hf.parameters())


def test_attribution_patching_uses_two_forward_passes():
    m = tiny("gpt2")
    calls = []
    h = m.hf.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        attribution_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["resid_pre", "attn.head_out"])
    finally:
        h.remove()
    assert len(calls) == 2


def test_attribution_patching_tracks_exact_patching():
    m = tiny("gpt2")
    kinds = ["attn.out", "mlp.out", "attn.head_out"]
    exact = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=kinds)
    approx = attribution_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=kinds)
    r = compare(exact, approx)
    assert set(r) == set(kinds)
    assert min(r.values()) > 0.9, r  # small units on a small random model: near linear
    ap_all = attribution_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["mlp.out"], positions="all")
    np.testing.assert_allclose(ap_all.effects["mlp.out"][:, 0], approx.effects["mlp.out"].sum(1), rtol=1e-4, atol=1e-6)


def test_result_roundtrip_and_pictures(tmp_path):
    m = tiny("gpt2")
    r = activation_patching(m, CLEAN, CORRUPT, " Mary", " John", sites=["resid_pre", "attn.head_out"])
    path = r.save(tmp_path / "p.json")
    back = PatchingResult.load(path)
    for k in r.effects:
        np.testing.assert_allclose(back.effects[k], r.effects[k])
    assert back.tokens == r.tokens and back.metric == r.metric
    html = r.to_html(tmp_path / "p.html")
    assert "<script" not in html and "resid_pre" in html
    png = r.to_png(tmp_path / "p.png", "attn.head_out")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").read_bytes() == png
    (tmp_path / "bad.json").write_text('{"format": "lmxray.attribution/1"}')
    with pytest.raises(FormatError):
        PatchingResult.load(tmp_path / "bad.json")
    assert r.top("resid_pre", 1)[0][1] == pytest.approx(float(np.nanmax(r.effects["resid_pre"])))


def test_metric_over_the_last_k_positions():
    """A teacher-forced continuation metric (the TransformerLens benchmark's): prefix reuse must
    fill the positions before a patch from the base run."""
    m = tiny("gpt2")
    clean, corrupt = m.encode(CLEAN), m.encode(CORRUPT)
    k = 4
    tgt = torch.tensor(clean[-k + 1:])

    def fn(lg):  # lg [N, k, V]: log-probs of the last k-1 clean tokens
        lp = torch.log_softmax(lg[:, :-1], -1)
        return lp[:, torch.arange(k - 1), tgt].sum(-1)

    r = activation_patching(m, clean, corrupt, sites=["resid_pre", "attn.head_out"], metric=fn, metric_positions=k)
    r0 = activation_patching(m, clean, corrupt, sites=["resid_pre", "attn.head_out"], metric=fn, metric_positions=k,
                             prefix_reuse=False)
    for key in r.raw:
        np.testing.assert_allclose(r.raw[key], r0.raw[key], atol=1e-4)
    src = run_with_cache(m, [clean], cache="all")
    for layer, pos in [(0, 3), (1, len(clean) - 2)]:
        with intervene(m, {f"layers.{layer}.resid_pre": patch(src, positions=[pos])}):
            lg = m.logits(corrupt)[None, -k:]
        assert r.raw["resid_pre"][layer, pos] == pytest.approx(float(fn(lg)[0]), abs=1e-4)
    ap = attribution_patching(m, clean, corrupt, sites=["attn.head_out"], metric=fn, metric_positions=k)
    assert compare(r, ap)["attn.head_out"] > 0.8
    with pytest.raises(InputError, match="metric function"):
        activation_patching(m, clean, corrupt, " Mary", " John", metric_positions=2)


def test_html_escapes_tokens():
    evil = "<script>alert(1)</script>"
    r = PatchingResult(tokens=[evil, "b"], corrupt_tokens=["a", "&"], effects={"resid_pre": np.ones((1, 2), np.float32)},
                       raw={"resid_pre": np.ones((1, 2), np.float32)}, metric="prob", clean_value=1.0,
                       corrupt_value=0.0, answer=evil)
    html = r.to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
