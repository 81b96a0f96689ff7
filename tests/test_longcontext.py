"""Long prompts: prefix reuse from the KV cache at any length (the stem path of
``lmxray.attribution._stems``), on a random-init Llama-style model with RoPE and an 8k context
built here; same numbers as plain scoring and as Captum's FeatureAblation, about half the token
positions, a correct fallback for sliding-window models and for caches that do not reproduce."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import lmxray
from conftest import tiny_config, tiny_tokenizer
from lmxray.attribution import _stems
from lmxray.attribution._prefix import count_forward_tokens, prefix_cache

WORDS = ("river stone cloud apple north quiet lamp seven green paper window bright garden "
         "silver tower winter bread music horse table").split()


def _text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    sents = []
    while sum(len(s.split()) for s in sents) < n_words:
        sents.append(" ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))).capitalize() + ".")
    return " ".join(sents)


@pytest.fixture(scope="module")
def llama8k():
    """Random-init Llama (RoPE, grouped-query attention) with an 8192-token context."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3,
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, rope_theta=10000.0,
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    return lmxray.load(model=hf, tokenizer=tok)


def test_the_model_has_rope_and_an_8k_context(llama8k):
    assert llama8k.max_length == 8192
    assert llama8k.config.model_type == "llama"
    assert hasattr(llama8k.hf.model, "rotary_emb")


@contextlib.contextmanager
def _split_off(hf):
    """Stem groups on the KV-cache path (split prefix attention switched off) inside."""
    saved = _stems.SPLIT_VERIFIED.get(hf)
    _stems.SPLIT_VERIFIED[hf] = False
    try:
        yield
    finally:
        _stems.SPLIT_VERIFIED.pop(hf, None)
        if saved is not None:
            _stems.SPLIT_VERIFIED[hf] = saved


@pytest.mark.parametrize("path", ["split", "cache"])
@pytest.mark.parametrize("replace", ["baseline", pytest.param("remove", marks=pytest.mark.slow)])
def test_stems_equal_plain_scoring_and_halve_the_positions(llama8k, replace, path):
    with _split_off(llama8k.hf) if path == "cache" else contextlib.nullcontext():
        _stems_equal_plain(llama8k, replace)
    registry = _stems.SPLIT_VERIFIED if path == "split" else _stems.KV_VERIFIED
    assert registry.get(llama8k.hf) is True


def _stems_equal_plain(llama8k, replace):
    prompt = _text(18)
    kw = dict(target=" river stone", method="occlusion", replace=replace)
    with prefix_cache("off"), count_forward_tokens() as plain:
        ref = llama8k.attribute(prompt, **kw)
    with prefix_cache("cache"), count_forward_tokens() as st:
        got = llama8k.attribute(prompt, **kw)
    n = len(ref.source_tokens)
    assert n > 70
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(got.target_scores, ref.target_scores, atol=1e-5)
    assert st.naive_tokens == plain.computed_tokens
    assert st.computed_tokens <= 0.56 * st.naive_tokens, st.as_dict()
    assert st.computed_tokens + st.reused_tokens == st.naive_tokens


@pytest.mark.slow
def test_auto_mode_takes_the_stem_path_for_long_rows(llama8k):
    prompt = _text(70, seed=1)
    with count_forward_tokens() as st:
        got = llama8k.attribute(prompt, target=" green", method="occlusion", replace="baseline",
                                baseline=0, sources="prompt")
    with prefix_cache("off"):
        ref = llama8k.attribute(prompt, target=" green", method="occlusion", replace="baseline",
                                baseline=0, sources="prompt")
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
    assert st.reused_tokens > 0 and st.computed_tokens < 0.75 * st.naive_tokens, st.as_dict()


@pytest.mark.slow
def test_a_wide_model_reuses_prefixes_of_rows_its_packs_cannot_hold():
    """d_model 512: a packed row (~256 positions) holds one 150-400-token row and little else, so
    occlusion at that length takes the stem path (it went plain before: computed == naive)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=512, n_head=8, vocab_size=len(tok), n_positions=512,
                     bos_token_id=1, eos_token_id=2, pad_token_id=3)
    m = lmxray.load(model=GPT2LMHeadModel(cfg).eval(), tokenizer=tok)
    prompt = _text(40, seed=2)
    kw = dict(target=" green", method="occlusion", replace="baseline", baseline=0, sources="prompt")
    with count_forward_tokens() as st:
        got = m.attribute(prompt, **kw)
    with prefix_cache("off"):
        ref = m.attribute(prompt, **kw)
    assert 150 <= len(got.source_tokens) <= 400
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
    assert st.computed_tokens <= 0.6 * st.naive_tokens, st.as_dict()


@pytest.mark.slow
def test_matches_captum_feature_ablation(llama8k):
    from captum.attr import FeatureAblation

    prompt = _text(30, seed=2)
    ids = llama8k.encode(prompt)
    target = llama8k.encode_target(" window")
    with prefix_cache("cache"):
        ours = llama8k.attribute(prompt, target=" window", method="occlusion", replace="baseline",
                                 baseline=0, sources="prompt")

    def logprob(x: torch.Tensor) -> torch.Tensor:
        logits = llama8k.hf(input_ids=x).logits[:, -1].float()
        return torch.log_softmax(logits, -1)[:, target[0]]

    x = torch.tensor([ids])
    with torch.no_grad():
        theirs = FeatureAblation(logprob).attribute(
            x, baselines=0, feature_mask=torch.arange(len(ids))[None], perturbations_per_eval=64
        )
    np.testing.assert_allclose(ours.scores[0, : len(ids)], theirs[0].numpy(), atol=1e-4)


@pytest.mark.slow
def test_sentence_coalitions_share_stems(llama8k):
    prompt = _text(40, seed=3)
    kw = dict(target=" bread", method="kernel_shap", features="sentence", n_samples=40,
              replace="remove")
    with prefix_cache("off"):
        ref = llama8k.attribute(prompt, **kw)
    with prefix_cache("cache"), count_forward_tokens() as st:
        got = llama8k.attribute(prompt, **kw)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
    assert st.reused_tokens > 0.3 * st.naive_tokens, st.as_dict()


def test_sliding_window_rows_longer_than_the_window_are_scored_plainly():
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config("mistral", len(tok))
    cfg.sliding_window = 16
    cfg.max_position_embeddings = 256
    torch.manual_seed(0)
    m = lmxray.load(model=AutoModelForCausalLM.from_config(cfg).eval(), tokenizer=tok)
    prompt = _text(12, seed=4)
    with prefix_cache("off"):
        ref = m.attribute(prompt, target=" lamp", method="occlusion")
    with prefix_cache("cache"), count_forward_tokens() as st:
        got = m.attribute(prompt, target=" lamp", method="occlusion")
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
    assert len(got.source_tokens) > 16 and st.reused_tokens == 0


def test_a_cache_that_does_not_reproduce_falls_back(llama8k, monkeypatch):
    prompt = _text(14, seed=5)
    with prefix_cache("off"):
        ref = llama8k.attribute(prompt, target=" music", method="occlusion")
    real = _stems.expanded_cache

    def shifted(layers, stem, batch):  # drops the first cached position: wrong numbers
        return real([(k[:, :, 1:], v[:, :, 1:]) for k, v in layers], stem - 1, batch)

    monkeypatch.setattr("lmxray.attribution._prefix.expanded_cache", shifted)
    saved = _stems.KV_VERIFIED.pop(llama8k.hf, None)
    try:
        with _split_off(llama8k.hf), prefix_cache("cache"), \
                pytest.warns(RuntimeWarning, match="cached prefix sharing"):
            got = llama8k.attribute(prompt, target=" music", method="occlusion")
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
        assert _stems.KV_VERIFIED.get(llama8k.hf) is False
    finally:
        _stems.KV_VERIFIED.pop(llama8k.hf, None)
        if saved is not None:
            _stems.KV_VERIFIED[llama8k.hf] = saved


def test_split_attention_that_does_not_reproduce_falls_back_to_the_cache(llama8k, monkeypatch):
    prompt = _text(14, seed=5)
    with prefix_cache("off"):
        ref = llama8k.attribute(prompt, target=" music", method="occlusion")
    real = _stems._attend

    def shifted(q, k, v, causal, scale):  # drops the first key of the stem: wrong numbers
        return real(q, k[:, :, 1:], v[:, :, 1:], causal, scale) if not causal else real(q, k, v, causal, scale)

    monkeypatch.setattr(_stems, "_attend", shifted)
    saved = _stems.SPLIT_VERIFIED.pop(llama8k.hf, None)
    try:
        with prefix_cache("cache"), pytest.warns(RuntimeWarning, match="split prefix attention"):
            got = llama8k.attribute(prompt, target=" music", method="occlusion")
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
        assert _stems.SPLIT_VERIFIED.get(llama8k.hf) is False
        assert _stems.KV_VERIFIED.get(llama8k.hf) is not False  # the cache path took over
    finally:
        _stems.SPLIT_VERIFIED.pop(llama8k.hf, None)
        if saved is not None:
            _stems.SPLIT_VERIFIED[llama8k.hf] = saved


@pytest.mark.slow
def test_groups_follow_the_memory_budget(llama8k):
    prompt = _text(30, seed=6)
    with prefix_cache("cache"), count_forward_tokens() as big:
        a = llama8k.attribute(prompt, target=" seven", method="occlusion")
    with prefix_cache("cache"), count_forward_tokens() as small:
        b = llama8k.attribute(prompt, target=" seven", method="occlusion", memory_budget=2_000_000)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)
    assert small.forwards > big.forwards


@pytest.mark.slow
def test_gradients_at_8k_tokens_run_chunked_within_the_budget(llama8k):
    prompt = _text(2200, seed=7)
    ids = llama8k.encode(prompt)[:7900]
    text = llama8k.tokenizer.decode(ids[1:] if ids[0] == 1 else ids)
    a = llama8k.attribute(text, target=" river", method="integrated_gradients", n_steps=4,
                          memory_budget=400_000_000)
    assert len(a.source_tokens) > 7000
    assert np.isfinite(a.scores[0, : a.prompt_length]).all()
    assert a.info.get("oom_backoff") is None


def test_a_prompt_longer_than_the_context_is_one_line(llama8k):
    prompt = _text(2500, seed=8)
    n = len(llama8k.encode(prompt)) + len(llama8k.encode_target(" river"))
    assert n > 8192
    with pytest.raises(lmxray.InputError) as exc:
        llama8k.attribute(prompt, target=" river", method="occlusion")
    msg = str(exc.value)
    assert "\n" not in msg and "8192" in msg and str(n) in msg


def test_cpu_groups_keep_their_activations_small(llama8k, monkeypatch):
    """On CPU a stem group's rows x suffix x 4 d activation stays near CPU_GROUP_BYTES (one row
    per group at a tiny size); the numbers do not change."""
    prompt = _text(14, seed=5)
    kw = dict(target=" music", method="occlusion")
    with prefix_cache("cache"), count_forward_tokens() as wide:
        a = llama8k.attribute(prompt, **kw)
    monkeypatch.setattr(_stems, "CPU_GROUP_BYTES", 1)
    with prefix_cache("cache"), count_forward_tokens() as narrow:
        b = llama8k.attribute(prompt, **kw)
    assert wide.forwards < narrow.forwards == narrow.unique_rows  # anchor + one row per group
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)


def test_last_layer_attends_only_from_read_positions(llama8k, monkeypatch):
    """Inside split prefix attention the last layer computes only the queries whose logits are
    read (every group once), and the numbers stay those of plain scoring."""
    prompt = _text(14, seed=5)
    kw = dict(target=" music", method="occlusion")
    with prefix_cache("off"):
        ref = llama8k.attribute(prompt, **kw)
    real, seen = _stems._read_queries_only, []

    def counted(query, key, value, pk, pv, reads, scaling):
        seen.append(sum(len(p) for _, p in reads))
        return real(query, key, value, pk, pv, reads, scaling)

    monkeypatch.setattr(_stems, "_read_queries_only", counted)
    with prefix_cache("cache"), count_forward_tokens() as st:
        got = llama8k.attribute(prompt, **kw)
    assert 0 < len(seen) < st.forwards and 0 < sum(seen) < st.computed_tokens  # groups, not anchors
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5, equal_nan=True)
