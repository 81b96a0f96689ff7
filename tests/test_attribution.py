"""Attribution methods: axioms, Captum as oracle, batching, determinism, errors, cleanup."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.attribution.gradient import ConvergenceWarning
from lmxray.errors import InputError, NumericalError

PROMPT = "The capital of France is"
TARGET = " Paris is in France"  # several target tokens
PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink"]
TARGETS = [" Paris. The", " to Mary"]
ALL_METHODS = sorted(lmxray.methods())


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def llama():
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


def _model(name):
    hf, tok = build_tiny(name)
    return lmxray.load(model=hf, tokenizer=tok)


# ---------------------------------------------------------------- contract shape
@pytest.mark.parametrize("method", ALL_METHODS)
def test_shape_and_nan_layout(gpt2, method):
    a = gpt2.attribute(PROMPT, target=TARGET, method=method)
    n_t, n_s = len(a.target_tokens), len(a.source_tokens)
    assert a.scores.shape == (n_t, n_s) and a.scores.dtype == np.float32
    assert a.source_tokens[-n_t:] == a.target_tokens
    valid = a.valid_mask()
    assert np.isfinite(a.scores[valid]).all()
    assert np.isnan(a.scores[~valid]).all()
    assert a.method == method and a.info["versions"]["lmxray"] == lmxray.__version__


# ---------------------------------------------------------------- IG axioms
@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("interpolate", ["all", "prompt"])
def test_ig_completeness_gauss_legendre(name, interpolate):
    m = _model(name)
    a = m.attribute(PROMPT, target=TARGET, method="integrated_gradients", n_steps=256,
                    integration="gausslegendre", interpolate=interpolate)
    diff = a.target_scores - np.asarray(a.info["baseline_scores"])
    total = np.nansum(a.scores, axis=1)
    assert np.all(np.abs(total - diff) <= 1e-3 * np.maximum(1.0, np.abs(diff)))
    assert np.allclose(a.info["convergence_delta"], total - diff, atol=1e-5)
    if interpolate == "prompt":  # earlier targets stay fixed: they get exactly zero
        assert np.allclose(np.nan_to_num(a.scores[:, a.prompt_length:]), 0.0)


def test_ig_completeness_trapezoid_and_baselines(gpt2):
    for baseline in ("zero", "pad", "unk", 0):
        a = gpt2.attribute(PROMPT, target=TARGET, method="integrated_gradients", n_steps=256,
                           integration="trapezoid", baseline=baseline)
        diff = a.target_scores - np.asarray(a.info["baseline_scores"])
        assert np.all(np.abs(np.nansum(a.scores, 1) - diff) <= 1e-3 * np.maximum(1, np.abs(diff)))


def test_ig_baseline_value_is_f_at_baseline(gpt2):
    """f(baseline) recorded by IG equals a direct forward on baseline embeddings."""
    a = gpt2.attribute(PROMPT, target=" Paris", method="integrated_gradients", baseline="unk", n_steps=8)
    ids = a.source_ids[:-1]
    emb = gpt2.embed(torch.full((1, len(ids)), gpt2.tokenizer.unk_token_id))
    with torch.no_grad():
        logits = gpt2.hf(inputs_embeds=emb).logits[0, a.prompt_length - 1]
    expected = torch.log_softmax(logits, -1)[a.target_ids[0]].item()
    assert a.info["baseline_scores"][0] == pytest.approx(expected, abs=1e-5)


def test_ig_array_baseline_and_warning(gpt2):
    n = len(gpt2.encode(PROMPT)) + 1
    base = np.zeros((n, gpt2.d_model), np.float32)
    a = gpt2.attribute(PROMPT, target=" Paris", method="integrated_gradients", baseline=base, n_steps=64)
    b = gpt2.attribute(PROMPT, target=" Paris", method="integrated_gradients", baseline="zero", n_steps=64)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    with pytest.raises(InputError, match="shape"):
        gpt2.attribute(PROMPT, target=" Paris", method="integrated_gradients", baseline=base[:2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gpt2.attribute(PROMPT, target=TARGET, method="integrated_gradients", n_steps=1,
                       integration="riemann_left", baseline="zero")
    assert any(issubclass(x.category, ConvergenceWarning) for x in w)


def test_ig_is_linear_in_the_target_contrast(gpt2):
    """IG of f(target) - f(foil) = IG(target) - IG(foil) (linearity axiom)."""
    kw = dict(method="integrated_gradients", n_steps=32, baseline="unk")
    c = gpt2.attribute(PROMPT, target=" Rome is", foil=" France is", **kw)
    t = gpt2.attribute(PROMPT, target=" Rome is", **kw)
    f = gpt2.attribute(PROMPT, target=" France is", **kw)
    # step 0 shares its prefix in all three runs
    np.testing.assert_allclose(c.scores[0], t.scores[0] - f.scores[0], atol=1e-5)
    assert c.target_scores[0] == pytest.approx(t.target_scores[0] - f.target_scores[0], abs=1e-5)
    # step 1: target and foil token are both " is" on the target's prefix: nothing to explain
    assert np.allclose(np.nan_to_num(c.scores[1]), 0.0) and c.target_scores[1] == 0.0
    assert c.info["foil"] == " France is"


# ---------------------------------------------------------------- Captum as oracle
def _step_fn(m, ids, target_id, t_pos):
    def f(emb):
        logits = m.hf(inputs_embeds=emb).logits[:, t_pos]
        return torch.log_softmax(logits, -1)[:, target_id]

    return f


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_equals_captum(name, method):
    captum = pytest.importorskip("captum.attr")
    m = _model(name)
    target = " Paris is in the"  # 5-token continuation
    kw = {"n_steps": 20, "baseline": "unk", "integration": "gausslegendre"} if method == "integrated_gradients" else {}
    a = m.attribute(PROMPT, target=target, method=method, **kw)
    assert len(a.target_tokens) == 5
    ids = torch.tensor([a.source_ids[:-1]])
    x = m.embed(ids).detach()
    P = a.prompt_length
    for t in range(len(a.target_tokens)):
        f = _step_fn(m, ids, a.target_ids[t], P + t - 1)
        if method == "saliency":
            ref = captum.Saliency(f).attribute(x, abs=True)
        elif method == "input_x_gradient":
            ref = captum.InputXGradient(f).attribute(x)
        else:
            b = m.embed(torch.full_like(ids, m.tokenizer.unk_token_id)).detach()
            ref = captum.IntegratedGradients(f).attribute(x, baselines=b, n_steps=20, method="gausslegendre")
        ref = ref[0].sum(-1).detach().numpy()[: P + t]
        np.testing.assert_allclose(a.scores[t, : P + t], ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- occlusion vs direct forward
@pytest.mark.parametrize("replace", ["remove", "baseline"])
def test_occlusion_equals_direct_forward(llama, replace):
    a = llama.attribute(PROMPT, target=TARGET, method="occlusion", replace=replace, baseline="unk")
    src = a.source_ids
    P = a.prompt_length
    for t in range(len(a.target_tokens)):
        for s in range(P + t):
            ids = list(src[: P + t])
            if replace == "remove":
                del ids[s]
            else:
                ids[s] = llama.tokenizer.unk_token_id
            lp = torch.log_softmax(llama.logits(ids)[-1], -1)[a.target_ids[t]].item()
            assert a.scores[t, s] == pytest.approx(a.target_scores[t] - lp, abs=1e-5)


# ---------------------------------------------------------------- attention methods
def test_attention_is_head_mean_of_eager_weights(gpt2):
    before = gpt2.config._attn_implementation
    a = gpt2.attribute(PROMPT, target=TARGET, method="attention", layer=1)
    ids = torch.tensor([a.source_ids[:-1]])
    with gpt2.eager_attention(), torch.no_grad():
        att = gpt2.hf(input_ids=ids, output_attentions=True).attentions[1][0].mean(0)
    P = a.prompt_length
    for t in range(len(a.target_tokens)):
        np.testing.assert_allclose(a.scores[t, : P + t], att[P + t - 1, : P + t].numpy(), atol=1e-6)
    r = gpt2.attribute(PROMPT, target=TARGET, method="attention_rollout")
    assert np.allclose(np.nansum(r.scores, 1), 1.0, atol=1e-5)  # rollout rows stay stochastic
    assert gpt2.config._attn_implementation == before  # the user's setting is restored


def test_attention_methods_restore_a_non_eager_implementation(gpt2):
    """The attention methods switch to eager attention for their forward and back after it."""
    before = gpt2.config._attn_implementation
    gpt2.hf.set_attn_implementation("sdpa")
    try:
        assert gpt2.config._attn_implementation == "sdpa"
        for method in ("attention", "attention_rollout"):
            a = gpt2.attribute(PROMPT, target=TARGET, method=method)
            assert np.isfinite(a.scores[0, : a.prompt_length]).all()
            assert gpt2.config._attn_implementation == "sdpa", method
    finally:
        gpt2.hf.set_attn_implementation(before)


# ---------------------------------------------------------------- batching and determinism
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_batched_equals_unbatched(name, method):
    m = _model(name)
    kw = {"n_steps": 16} if method == "integrated_gradients" else {}
    batch = m.attribute(PROMPTS, target=TARGETS, method=method, **kw)
    assert isinstance(batch, list) and len(batch) == 2
    for p, t, b in zip(PROMPTS, TARGETS, batch, strict=True):
        single = m.attribute(p, target=t, method=method, **kw)
        np.testing.assert_allclose(b.scores, single.scores, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(b.target_scores, single.target_scores, atol=1e-5)
        again = m.attribute(p, target=t, method=method, **kw)
        np.testing.assert_array_equal(single.scores, again.scores)


def test_small_chunks_equal_one_chunk(gpt2):
    kw = dict(target=TARGETS, method="integrated_gradients", n_steps=12)
    a = gpt2.attribute(PROMPTS, internal_batch_size=5, **kw)
    b = gpt2.attribute(PROMPTS, internal_batch_size=64, **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5, equal_nan=True)
    c = gpt2.attribute(PROMPTS, target=TARGETS, method="occlusion", internal_batch_size=3)
    d = gpt2.attribute(PROMPTS, target=TARGETS, method="occlusion")
    for x, y in zip(c, d, strict=True):
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5, equal_nan=True)


# ---------------------------------------------------------------- targets, generation
def test_target_functions(gpt2):
    lp = gpt2.attribute(PROMPT, target=TARGET, method="saliency")
    pr = gpt2.attribute(PROMPT, target=TARGET, method="saliency", target_fn="prob")
    lg = gpt2.attribute(PROMPT, target=TARGET, method="saliency", target_fn="logit")
    np.testing.assert_allclose(pr.target_scores, np.exp(lp.target_scores), rtol=1e-5)
    # d p / d e = p * d logp / d e  -> saliency (|.|, summed) scales by p
    np.testing.assert_allclose(pr.scores, lp.scores * pr.target_scores[:, None], rtol=1e-4, atol=1e-7)
    assert not np.allclose(lg.target_scores, lp.target_scores)

    def double_logprob(logits, ids):
        return 2 * torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    cu = gpt2.attribute(PROMPT, target=TARGET, method="input_x_gradient", target_fn=double_logprob)
    ix = gpt2.attribute(PROMPT, target=TARGET, method="input_x_gradient")
    np.testing.assert_allclose(cu.scores, 2 * ix.scores, rtol=1e-5, atol=1e-7)
    assert "double_logprob" in cu.info["target_fn"]


def test_generation_then_attribution(llama):
    a = llama.attribute(PROMPT, max_new_tokens=3, method="saliency")
    expected = llama.generate_ids(llama.encode(PROMPT), 3)
    assert a.target_ids == expected and a.info["generated"] is True
    d = llama.attribute(PROMPT, method="saliency")  # default: a few generated tokens
    assert 1 <= len(d.target_tokens) <= 5


# ---------------------------------------------------------------- errors and cleanup
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prompt="", target=" x"), "prompt is empty"),
        (dict(prompt="   ", target=" x"), "prompt is empty"),
        (dict(prompt=PROMPT, target=""), "target is empty"),
        (dict(prompt=PROMPT, target=" x", method="nope"), "unknown method 'nope'; choose one of: attention"),
        (dict(prompt=PROMPT, target=" x", n_steps=3, method="saliency"), "does not take n_steps"),
        (dict(prompt=PROMPT, target=" x" * 80), "longer than the model's context of 64"),
        (dict(prompt=PROMPT, target=" Paris", foil=" Paris is"), "same token length"),
        (dict(prompt=PROMPT, target=" x", max_new_tokens=2), "not both"),
        (dict(prompt=PROMPT, target=" x", method="integrated_gradients", baseline="mean"), "unknown baseline"),
        (dict(prompt=PROMPT, target=" x", method="integrated_gradients", integration="simpson"), "unknown integration"),
        (dict(prompt=PROMPT, target=" x", target_fn="entropy"), "unknown target function"),
        (dict(prompt=[PROMPT, PROMPT], target=[" x"]), "one per prompt"),
        (dict(prompt=PROMPT, target=" x", method="attention", layer=7), "layer must be"),
        (dict(prompt=PROMPT, target=" x", method="occlusion", replace="mask"), "replace must be"),
    ],
)
def test_bad_input_is_one_line_error(gpt2, kwargs, match):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt")
    with pytest.raises(InputError, match=match) as err:
        gpt2.attribute(prompt, **kwargs)
    assert "\n" not in str(err.value)


def test_nan_model_output_is_an_error():
    hf, tok = build_tiny("gpt2")
    with torch.no_grad():
        hf.lm_head.weight[0, 0] = float("nan")
    m = lmxray.load(model=hf, tokenizer=tok)
    with pytest.raises(NumericalError, match="NaN"):
        m.attribute(PROMPT, target=" Paris", method="saliency")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_model_left_as_it_was_after_failure(method):
    hf, tok = build_tiny("gpt2")
    # transformers 5 installs its own output-capturing hooks on first use of output_attentions;
    # those are not ours: take them as the baseline
    with torch.no_grad():
        hf(input_ids=torch.tensor([[1, 5, 6]]), output_attentions=True)

    def hooks():
        return [(n, list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
                for n, m in hf.named_modules()]

    hooks_before = hooks()
    hf.train()
    attn_before = hf.config._attn_implementation
    grads_before = [p.requires_grad for p in hf.parameters()]
    m = lmxray.load(model=hf, tokenizer=tok)

    def broken(logits, ids):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        m.attribute(PROMPT, target=" Paris", method=method, target_fn=broken)
    assert hf.training
    assert hf.config._attn_implementation == attn_before
    assert [p.requires_grad for p in hf.parameters()] == grads_before
    assert all(p.grad is None for p in hf.parameters())
    assert hooks() == hooks_before
