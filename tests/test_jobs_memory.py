"""Out-of-memory back-off on every batched path: a forward that runs out of memory above a batch
size makes the chunk halve and retry (``info["oom_backoff"]``), and the numbers stay the same.
The budget is read per device (the smallest free memory of the devices a model uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.internals import activation_patching, causal_trace
from lmxray.memory import available_memory

PROMPT, TARGET = "The capital of France is", " Paris"


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


class Tight:
    """Makes the model's forward raise CUDA's out-of-memory error for inputs of more than
    ``tokens`` tokens (rows x length: packed perturbations are long rows)."""

    def __init__(self, model, tokens: int) -> None:
        self.hf, self.tokens, self.raised = model.hf, tokens, 0

    def __enter__(self):
        inner = self.hf.forward

        def forward(*args, **kw):
            x = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
            if x is not None and x.shape[0] * x.shape[1] > self.tokens:
                self.raised += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return inner(*args, **kw)

        self.hf.forward = forward
        return self

    def __exit__(self, *exc):
        del self.hf.forward  # the class's forward again


@pytest.mark.parametrize("method,kw,tokens", [("integrated_gradients", {"n_steps": 8}, 30), ("occlusion", {}, 30)])
def test_attribution_halves_the_chunk_and_gives_the_same_numbers(gpt2, method, kw, tokens):
    free = gpt2.attribute(PROMPT, target=TARGET, method=method, internal_batch_size=8, **kw)
    assert "oom_backoff" not in free.info
    with Tight(gpt2, tokens) as t:
        a = gpt2.attribute(PROMPT, target=TARGET, method=method, internal_batch_size=8, **kw)
    assert t.raised >= 1
    assert a.info["oom_backoff"] and a.info["oom_backoff"][0][1] == a.info["oom_backoff"][0][0] // 2
    np.testing.assert_allclose(a.scores, free.scores, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_patching_and_tracing_halve_the_chunk(gpt2):
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    free = activation_patching(gpt2, clean, corrupt, metric="prob", batch_size=8)
    with Tight(gpt2, 8):
        p = activation_patching(gpt2, clean, corrupt, metric="prob", batch_size=8)
    assert p.info["oom_backoff"]
    for k in free.effects:
        np.testing.assert_allclose(p.effects[k], free.effects[k], rtol=1e-5, atol=1e-6)
    free_t = causal_trace(gpt2, PROMPT, "France", kinds=["resid_post"], n_samples=2, batch_size=8)
    with Tight(gpt2, 16):
        t = causal_trace(gpt2, PROMPT, "France", kinds=["resid_post"], n_samples=2, batch_size=8)
    assert t.info["oom_backoff"]
    np.testing.assert_allclose(t.restored["resid_post"], free_t.restored["resid_post"], rtol=1e-5, atol=1e-6)


def test_the_budget_is_the_smallest_of_the_model_devices(monkeypatch):
    import lmxray.memory as mem

    free = {"cuda:0": 40 << 30, "cuda:1": 10 << 30}
    monkeypatch.setattr(mem, "_cuda_free", lambda d: free[str(d)])
    assert available_memory("cuda:0") == int(free["cuda:0"] * mem.CUDA_SHARE)
    assert available_memory(["cuda:0", "cuda:1"]) == int(free["cuda:1"] * mem.CUDA_SHARE)
    assert available_memory(["cpu"]) == available_memory("cpu")
