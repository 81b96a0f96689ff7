"""Prefix KV-cache reuse in score_sequences: same numbers as full recomputation on every family,
fewer token positions, duplicates once, bounded chunks, and a safe fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lmxray
from conftest import FAMILIES, build_tiny
from lmxray.attribution import ScoreRow, _prefix, score_sequences
from lmxray.attribution._prefix import count_forward_tokens, prefix_cache
from lmxray.attribution.base import Context
from lmxray.targets import resolve_target_fn

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["The capital of France is Paris. The capital of Italy is",
           "When Mary and John went to the store, John gave"]
TARGETS = [" Rome. The quick", " a drink to Mary"]


def _load(family):
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


def _both(m, **kw):
    with prefix_cache("off"), count_forward_tokens() as plain_stats:
        plain = m.attribute(PROMPTS, target=TARGETS, **kw)
    with prefix_cache("on"), count_forward_tokens() as reuse_stats:
        reuse = m.attribute(PROMPTS, target=TARGETS, **kw)
    return plain, reuse, plain_stats, reuse_stats


@pytest.mark.parametrize("family", FAMILIES)
def test_reuse_equals_full_recomputation_every_family(family):
    m = _load(family)
    for kw in (dict(method="occlusion"), dict(method="occlusion", replace="baseline"),
               dict(method="kernel_shap", n_samples=24, replace="baseline")):
        plain, reuse, ps, rs = _both(m, **kw)
        for a, b in zip(plain, reuse, strict=True):
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose(b.target_scores, a.target_scores, atol=1e-5)
        assert rs.reused_tokens > 0 and rs.computed_tokens < ps.computed_tokens, (family, kw)
        assert ps.reused_tokens == 0


def test_occlusion_position_count_halves():
    m = _load("gpt2")
    with prefix_cache("on"), count_forward_tokens() as st:
        a = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion", replace="baseline")
    n_in = len(a.source_tokens) - 1
    assert st.rows == n_in + 1 and st.naive_tokens == (n_in + 1) * n_in
    # the unperturbed row in full, each occluded row from its occluded position on (a token
    # trie), plus the shared path repeated at the start of the second packed row (width 128)
    ideal = n_in + sum(n_in - p for p in range(n_in))
    assert ideal <= st.computed_tokens <= ideal + n_in
    assert st.computed_tokens + st.reused_tokens == st.naive_tokens
    assert st.forwards == 1


def test_arbitrary_rows_foils_and_target_functions():
    """Rows that do not come from one base sequence (faithfulness-style), foils, prob target."""
    m = _load("llama")
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(4, m.vocab_size, 30)]
    rows = []
    for k in range(40):
        ids = list(base[: int(rng.integers(5, 30))])
        for p in rng.choice(len(ids), size=int(rng.integers(0, 3)), replace=False):
            ids[int(p)] = int(rng.integers(4, m.vocab_size))
        n_t = int(rng.integers(1, 4))
        tg = [int(x) for x in rng.integers(4, m.vocab_size, n_t)]
        foil = [int(x) for x in rng.integers(4, m.vocab_size, n_t)] if k % 3 == 0 else None
        rows.append(ScoreRow(ids, tg, foil))
    rows += rows[:5]  # duplicates
    for fn in ("logprob", "prob"):
        ctx = Context(target_fn=resolve_target_fn(fn))
        with prefix_cache("off"):
            plain = score_sequences(m, rows, ctx)
        with prefix_cache("on"), count_forward_tokens() as st:
            reuse = score_sequences(m, rows, ctx)
        for a, b in zip(plain, reuse, strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5)
        assert st.unique_rows == 40 and st.rows == 45
        assert st.computed_tokens < st.naive_tokens


def test_small_chunks_bound_the_batches_and_keep_the_numbers():
    m = _load("qwen2")
    with prefix_cache("on"), count_forward_tokens() as big:
        a = m.attribute(PROMPTS, target=TARGETS, method="occlusion")
    with prefix_cache("on"), count_forward_tokens() as small:
        b = m.attribute(PROMPTS, target=TARGETS, method="occlusion", internal_batch_size=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(y.scores, x.scores, atol=1e-5, equal_nan=True)
    assert small.forwards > big.forwards
    assert small.padded_tokens / small.forwards <= 2 * 128  # at most 2 packed rows of <= 128


def test_auto_mode_and_methods_report_positions():
    m = _load("gpt2")
    a = m.attribute(PROMPTS[1], target=TARGETS[1], method="shapley_sampling", n_samples=4)
    ft = a.info["forward_tokens"]
    assert ft["computed_tokens"] <= ft["naive_tokens"] and ft["unique_rows"] <= ft["rows"]


def test_a_cache_that_does_not_reproduce_falls_back_with_a_warning(monkeypatch):
    m = _load("gpt2")
    with prefix_cache("off"):
        ref = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    real = _prefix._trie_packs

    def broken(rows, idx, width):  # every position id off by one: wrong numbers
        packs = real(rows, idx, width)
        for pk in packs:
            pk.depth = pk.depth + 1
        return packs

    monkeypatch.setattr(_prefix, "_trie_packs", broken)
    try:
        with prefix_cache("on"), pytest.warns(RuntimeWarning, match="packed prefix sharing"):
            got = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
        assert _prefix._VERIFIED.get(m.hf) is False
        with prefix_cache("on"), count_forward_tokens() as st:  # disabled for this model now
            m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        assert st.reused_tokens == 0
    finally:
        _prefix._VERIFIED.pop(m.hf, None)


def test_model_without_position_ids_is_scored_plainly(monkeypatch):
    m = _load("gpt2")
    monkeypatch.setattr(m, "_accepts_position_ids", False)
    with prefix_cache("on"), count_forward_tokens() as st:
        m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    assert st.reused_tokens == 0


def test_bad_mode_is_an_input_error():
    with pytest.raises(lmxray.InputError, match="prefix cache mode"):
        with prefix_cache("always"):
            pass


# The same equality under transformers 4.57 is a documented script, not a test (CI has no
# second venv): benchmarks/.peers/venv-captum/bin/python benchmarks/perturbation/check_prefix.py


def test_torch_state_untouched():
    m = _load("gpt2")
    before = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    m.attribute(PROMPTS[0], target=TARGETS[0], method="kernel_shap", n_samples=8)
    assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == before
    assert not m.hf.training and all(p.requires_grad for p in m.hf.parameters())
    assert sys.modules.get("lmxray.attribution._prefix") is _prefix


def _gelu_new(m):
    return [mod for mod in m.hf.modules() if type(mod).__name__ == "NewGELUActivation"]


def test_fused_activations_same_function_swapped_and_restored():
    m = _load("gpt2")
    before = _gelu_new(m)
    assert len(before) == m.n_layers
    ids = torch.tensor([m.encode(PROMPTS[0])])
    with torch.no_grad():
        ref = m.hf(input_ids=ids).logits
        with m.fused_activations():
            assert _gelu_new(m) == []
            fused = m.hf(input_ids=ids).logits
    assert _gelu_new(m) == before  # the same module objects back in place
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), m.fused_activations():
        raise RuntimeError("inside")
    assert _gelu_new(m) == before
    llama = _load("llama")
    mods = list(llama.hf.modules())
    with llama.fused_activations():
        assert list(llama.hf.modules()) == mods  # SiLU models are left alone


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_last_mlp_runs_only_where_logits_are_read(family):
    from lmxray.sites import site_map

    m = _load(family)
    seen: list[tuple[int, ...]] = []
    mlp = site_map(m).mlps[-1]
    inner = mlp.forward

    def watch(x, *a, **k):  # not a hook: a hook on the last block switches the trimming off
        seen.append(tuple(x.shape[:2]))
        return inner(x, *a, **k)

    mlp.forward = watch
    try:
        with prefix_cache("on"):
            m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")  # + a plain check
            seen.clear()
            with count_forward_tokens() as st:
                a = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        # one row of the positions read: each row's target steps (a row occluding a target
        # token reads only the steps after it), never the other computed positions
        reads = sum(s[1] for s in seen)
        assert seen and all(s[0] == 1 for s in seen)
        assert st.unique_rows <= reads <= st.unique_rows * len(a.target_tokens) < st.computed_tokens
        seen.clear()
        with prefix_cache("off"):
            m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        assert sum(s[0] * s[1] for s in seen) > reads  # plain batches run it everywhere
    finally:
        del mlp.forward


def test_intervention_on_the_last_block_sees_every_position():
    """Under an intervention, positions are the sequence's own: rows are scored plainly (packed
    rows and stem groups would shift them; the last MLP would see only the positions read)."""
    from lmxray.hooks import add, intervene

    m = _load("gpt2")
    site = f"layers.{m.n_layers - 1}.mlp.out"
    vec = 3 * torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    free = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    n = len(m.encode(PROMPTS[0]))
    for where in ([3, 5], [n - 1]):  # positions no target reads, then the first target's
        out = {}
        for mode in ("off", "on"):
            with intervene(m, {site: add(vec, positions=where)}), prefix_cache(mode):
                out[mode] = m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        np.testing.assert_allclose(out["on"].scores, out["off"].scores, atol=1e-5, equal_nan=True)
        moved = np.abs(free.target_scores - out["on"].target_scores).max()
        assert (moved > 1e-3) == (where == [n - 1]), (where, moved)


def test_observer_hooks_keep_prefix_reuse_other_hooks_do_not():
    """A hook marked :func:`lmxray.hooks.observer` (the app's cancel check) leaves packed rows
    in use; an unmarked one inside the model (it may read positions) makes scoring plain."""
    from lmxray.hooks import observer

    m = _load("gpt2")
    block = m.hf.transformer.h[0]
    for mark, reused in ((observer, True), (lambda f: f, False)):
        handle = block.register_forward_pre_hook(mark(lambda mod, args: None))
        try:
            with prefix_cache("on"), count_forward_tokens() as st:
                m.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
        finally:
            handle.remove()
        assert (st.reused_tokens > 0) is reused
