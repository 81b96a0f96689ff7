"""Models placed with accelerate (``lmxray.load(..., device_map=...)``, CPU and disk offload)
give the same numbers as the model on one device: gradient and perturbation attribution, the
hook layer, patching, the logit lens and causal tracing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.hooks import zero
from lmxray.internals import activation_patching, causal_trace, logit_lens

PROMPT, TARGET = "The capital of France is", " Paris"
DISK = {"model.embed_tokens": "disk", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "cpu",
        "model.rotary_emb": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def pair(tiny_llama_dir, tmp_path_factory):
    """(the model on one device, the same model with half its modules offloaded to disk)."""
    one = lmxray.load(str(tiny_llama_dir))
    off = lmxray.load(str(tiny_llama_dir), device_map=DISK, offload_folder=str(tmp_path_factory.mktemp("off")))
    return one, off


@pytest.fixture(scope="module")
def cpu_offloaded():
    """accelerate.cpu_offload on a model in memory: every weight on the meta device, loaded from a
    CPU copy by the hooks at each forward."""
    from accelerate import cpu_offload

    hf, tok = build_tiny("llama")
    one = lmxray.load(model=hf, tokenizer=tok)
    hf2, _ = build_tiny("llama")
    cpu_offload(hf2, execution_device=torch.device("cpu"))
    return one, lmxray.load(model=hf2, tokenizer=tok)


def _close(a, b, atol=1e-5):
    a, b = (x.detach().float().numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
    np.testing.assert_allclose(np.nan_to_num(np.asarray(a, dtype=float)), np.nan_to_num(np.asarray(b, dtype=float)),
                               rtol=1e-4, atol=atol)


def test_the_offloaded_model_really_is_offloaded(pair, cpu_offloaded):
    _, off = pair
    assert off.hf.model.embed_tokens.weight.device.type == "meta"
    assert off.device == torch.device("cpu")
    assert off.devices == [torch.device("cpu")]
    assert off.embedding_matrix.shape == (off.vocab_size, off.d_model)
    assert off.embedding_matrix.device.type == "cpu"
    assert cpu_offloaded[1].hf.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    _close(off.embedding_matrix, pair[0].embedding_matrix, atol=0)


SLOW = pytest.mark.slow  # a few seconds each on a loaded 2-core machine; the full suite runs them
CASES = [pytest.param(w, m, marks=() if (w, m) == ("disk", "saliency") else SLOW)
         for w in ("disk", "cpu") for m in ("integrated_gradients", "saliency", "occlusion", "lime")]


@pytest.mark.parametrize(("which", "method"), CASES)
def test_attribution_equals_one_device(pair, cpu_offloaded, method, which):
    one, off = pair if which == "disk" else cpu_offloaded
    kw = {"n_steps": 8} if method == "integrated_gradients" else {"n_samples": 16, "seed": 0} if method == "lime" else {}
    a = one.attribute(PROMPT, target=TARGET, method=method, **kw)
    b = off.attribute(PROMPT, target=TARGET, method=method, **kw)
    assert a.source_tokens == b.source_tokens
    _close(a.scores, b.scores)
    _close(a.target_scores, b.target_scores)


@SLOW
def test_hooks_cache_and_interventions_equal_one_device(pair):
    one, off = pair
    ca = one.run(PROMPT, cache=["layers.0.resid_post", "layers.1.mlp.out"])
    cb = off.run(PROMPT, cache=["layers.0.resid_post", "layers.1.mlp.out"])
    for k in ("layers.0.resid_post", "layers.1.mlp.out"):
        _close(ca[k], cb[k])
    with one.intervene({"layers.0.attn.out": zero()}):
        la = one.logits(PROMPT)
    with off.intervene({"layers.0.attn.out": zero()}):
        lb = off.logits(PROMPT)
    _close(la, lb)
    assert not np.allclose(la.numpy(), one.logits(PROMPT).numpy())  # the intervention did act


@SLOW
def test_patching_lens_and_tracing_equal_one_device(pair):
    one, off = pair
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    pa = activation_patching(one, clean, corrupt, sites=("resid_pre", "mlp.out"), metric="prob")
    pb = activation_patching(off, clean, corrupt, sites=("resid_pre", "mlp.out"), metric="prob")
    for k in pa.effects:
        _close(pa.effects[k], pb.effects[k])
    la, lb = logit_lens(one, PROMPT), logit_lens(off, PROMPT)
    _close(la.top_probs, lb.top_probs)
    _close(la.target_prob, lb.target_prob)
    _close(la.kl, lb.kl)
    ta = causal_trace(one, PROMPT, "France", kinds=["resid_post", "mlp.out"], n_samples=2, window=2)
    tb = causal_trace(off, PROMPT, "France", kinds=["resid_post", "mlp.out"], n_samples=2, window=2)
    assert ta.noise_std == pytest.approx(tb.noise_std, rel=1e-6)
    for k in ta.restored:
        _close(ta.restored[k], tb.restored[k])
