"""Shapley sampling, KernelSHAP and LIME: axioms, brute-force oracles, planted functions,
feature groups, batching, determinism, result round trip and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.attribution._games import segment_spans
from lmxray.attribution._prefix import prefix_cache
from lmxray.blackbox import from_callable
from lmxray.errors import InputError

PROMPT = "The capital of France"
TARGET = " is Paris"
COALITION_METHODS = ["shapley_sampling", "kernel_shap", "lime"]


@pytest.fixture(scope="module")
def llama():
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


# ---------------------------------------------------------------- brute-force oracle
def _logp_next_batch(hf, seqs: list[list[int]], targets: list[int]) -> list[float]:
    """log p(target_i | seq_i) from plain HF forwards, left-padded with explicit positions."""
    out = []
    for a in range(0, len(seqs), 64):
        chunk, tg = seqs[a:a + 64], targets[a:a + 64]
        n = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), n), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, n - len(s):] = torch.tensor(s)
            mask[i, n - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        lp = torch.log_softmax(logits.double(), -1)
        out += [float(lp[i, t]) for i, t in enumerate(tg)]
    return out


def _brute_force_shapley(m, prompt_ids, target_ids, replace, baseline_id):
    """Exact Shapley values per step from the definition (all subsets of the step's prefix)."""
    ids = prompt_ids + target_ids
    n_p, out = len(prompt_ids), np.full((len(target_ids), len(ids)), np.nan)
    bos = m.tokenizer.bos_token_id
    for t, tgt in enumerate(target_ids):
        n = n_p + t  # the step reads positions 0..n-1
        subsets = [frozenset(s) for k in range(n + 1) for s in itertools.combinations(range(n), k)]
        seqs = []
        for s in subsets:
            if replace == "remove":
                seqs.append([ids[p] for p in sorted(s)] or [bos])
            else:
                seqs.append([ids[p] if p in s else baseline_id for p in range(n)])
        v = dict(zip(subsets, _logp_next_batch(m.hf, seqs, [tgt] * len(seqs)), strict=True))
        for i in range(n):
            phi = 0.0
            for s in subsets:
                if i in s:
                    continue
                k = len(s)
                phi += math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) * (
                    v[s | {i}] - v[s]
                )
            out[t, i] = phi
    return out


@pytest.mark.parametrize("replace", ["remove", "baseline"])
def test_exact_kernel_shap_equals_brute_force_shapley(llama, replace):
    a = llama.attribute(PROMPT, target=TARGET, method="kernel_shap", replace=replace, baseline="unk")
    assert a.info["exact"] is True and a.info["n_players"] <= 10
    ref = _brute_force_shapley(
        llama, llama.encode(PROMPT), llama.encode_target(TARGET), replace,
        llama.tokenizer.unk_token_id,
    )
    valid = a.valid_mask()
    np.testing.assert_allclose(a.scores[valid], ref[valid], atol=1e-5)
    # efficiency: every step's values sum to f(full) - f(empty) within 1e-5
    gap = np.nansum(a.scores, axis=1) - (a.target_scores - np.asarray(a.info["empty_value"]))
    assert np.abs(gap).max() <= 1e-5


def test_shapley_sampling_efficiency_and_convergence(llama):
    exact = llama.attribute(PROMPT, target=TARGET, method="kernel_shap", replace="baseline")
    s = llama.attribute(PROMPT, target=TARGET, method="shapley_sampling", replace="baseline",
                        n_samples=40, seed=3)
    # telescoping: efficiency holds per permutation, so exactly up to float rounding
    gap = np.nansum(s.scores, axis=1) - (s.target_scores - np.asarray(s.info["empty_value"]))
    assert np.abs(gap).max() <= 1e-5
    se = np.asarray(s.info["standard_error"], dtype=float)
    valid = s.valid_mask()
    err = np.abs(s.scores - exact.scores)[valid]
    assert (err <= 4 * se[valid] + 1e-6).mean() >= 0.95, (err, se[valid])
    assert err.max() < 0.05
    # antithetic pairs: a permutation and its reverse
    assert s.info["antithetic"] is True and s.info["n_samples"] == 40


def test_all_methods_give_exact_values_on_a_planted_additive_game(gpt2):
    """v(S) = c + sum_{i in S} w_i: Shapley values and the linear surrogate are the weights."""
    tok = gpt2.tokenizer
    prompt = "The capital of France is"
    ids = gpt2.encode(prompt)
    weights = {tid: 0.1 * (k + 1) * (-1) ** k for k, tid in enumerate(ids)}

    def fn(pairs):
        return [[-5.0 + sum(weights.get(t, 0.0) for t in set(p[: len(p)])) for _ in c]
                for p, c in pairs]

    bb = from_callable(fn, tok, name="additive")
    truth = np.array([weights[t] for t in ids])
    for method, kw in [("kernel_shap", {}), ("kernel_shap", {"exact": False, "n_samples": 64}),
                       ("shapley_sampling", {"n_samples": 6}), ("lime", {"alpha": 0.0})]:
        # baseline replacement: v(empty) = c (removal would score the empty prefix after BOS)
        a = bb.attribute(prompt, target=" Paris", method=method, sources="prompt",
                         replace="baseline", **kw)
        np.testing.assert_allclose(a.scores[0, : len(ids)], truth, atol=1e-6, err_msg=method)


def test_lime_recovers_a_planted_additive_function_with_two_features(gpt2):
    """Two features (BOS+'The' | ' capital'): LIME's surrogate is exactly f = c + 0.7 z1 - 0.3 z2."""
    tok = gpt2.tokenizer
    prompt = "The capital"
    ids = gpt2.encode(prompt)
    assert len(ids) == 3
    a_id, b_id = ids[1], ids[2]

    def fn(pairs):
        return [[-4.0 + 0.7 * (a_id in p) - 0.3 * (b_id in p) for _ in c] for p, c in pairs]

    bb = from_callable(fn, tok)
    a = bb.attribute(prompt, target=" is", method="lime", sources="prompt",
                     features=[(0, 2), (2, 3)], alpha=0.0, n_samples=50)
    groups = a.info["groups"]
    assert groups == [[0, 2], [2, 3]]
    # group values are spread over their tokens: z1 = BOS+'The' -> 0.35 each
    np.testing.assert_allclose(a.scores[0, :3], [0.35, 0.35, -0.3], atol=1e-6)
    assert a.info["intercept"][0] == pytest.approx(-4.0, abs=1e-6)
    assert a.info["surrogate_r2"][0] == pytest.approx(1.0, abs=1e-6)
    # the default ridge penalty shrinks, but keeps the signs and the order
    b = bb.attribute(prompt, target=" is", method="lime", sources="prompt",
                     features=[(0, 2), (2, 3)], n_samples=50)
    assert b.scores[0, 0] > 0 > b.scores[0, 2] and abs(b.scores[0, 0]) < 0.35


def test_lime_matches_its_reference_recipe(llama):
    """Kernel, samples and ridge as in lime.lime_text, re-implemented here from the paper."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics.pairwise import cosine_distances

    from lmxray.attribution.surrogate import lime_samples

    a = llama.attribute(PROMPT, target=" is", method="lime", replace="baseline", n_samples=64,
                        seed=7, kernel_width=25.0)
    ids = llama.encode(PROMPT)
    n = len(ids)
    rng = np.random.default_rng([7, *ids, *llama.encode_target(" is"), *llama.encode_target(" is")])
    z = lime_samples(rng, n, 64)
    assert z[0].all() and (z[1:].sum(1) < n).all()
    unk, tgt = llama.tokenizer.unk_token_id, llama.encode_target(" is")[0]
    seqs = [[t if keep else unk for t, keep in zip(ids, row, strict=True)] for row in z]
    y = np.array(_logp_next_batch(llama.hf, seqs, [tgt] * len(seqs)))
    d = cosine_distances(z.astype(float), np.ones((1, n))).ravel() * 100
    w = np.sqrt(np.exp(-(d**2) / 25.0**2))
    ref = Ridge(alpha=1.0).fit(z.astype(float), y, sample_weight=w)
    np.testing.assert_allclose(a.scores[0, :n], ref.coef_, atol=1e-5)


# ---------------------------------------------------------------- feature groups
def test_word_groups_exact_efficiency(gpt2):
    prompt = "The capital of France is Paris."
    a = gpt2.attribute(prompt, target=" The", method="kernel_shap", features="word",
                       sources="prompt")
    toks = a.source_tokens
    words = ["".join(toks[b:e]) for b, e in a.info["groups"]]
    assert words == ["<bos>", "The", " capital", " of", " France", " is", " Paris", "."]
    assert a.info["exact"] is True and a.info["n_players"] <= 10
    for b, e in a.info["groups"]:  # tokens of one group share its value equally
        assert np.allclose(a.scores[0, b:e], a.scores[0, b])
    gap = np.nansum(a.scores[0]) - (a.target_scores[0] - a.info["empty_value"][0])
    assert abs(gap) <= 1e-5


def test_sentence_groups(gpt2):
    prompt = "The capital of France is Paris. The capital of Italy is"
    s = gpt2.attribute(prompt, target=" Rome", method="kernel_shap", features="sentence",
                       sources="prompt")
    toks = s.source_tokens
    sentences = ["".join(toks[b:e]) for b, e in s.info["groups"]]
    assert sentences == ["<bos>", "The capital of France is Paris.", " The capital of Italy is"]
    gap = np.nansum(s.scores[0]) - (s.target_scores[0] - s.info["empty_value"][0])
    assert abs(gap) <= 1e-5


def test_user_spans_from_text_segments(gpt2):
    parts = ["System: be brief.", " Document: Paris is in France.", " Question: where is Paris?"]
    prompt = "".join(parts)
    spans = segment_spans(gpt2, parts)
    toks = gpt2.token_strings(gpt2.encode(prompt))
    assert ["".join(toks[a:b]) for a, b in spans] == parts
    a = gpt2.attribute(prompt, target=" France", method="shapley_sampling", features=spans,
                       sources="prompt", n_samples=4)
    assert a.info["n_players"] == 4  # BOS + three segments
    gap = np.nansum(a.scores[0]) - (a.target_scores[0] - a.info["empty_value"][0])
    assert abs(gap) <= 1e-5


def test_sources_prompt_leaves_target_cells_undefined(gpt2):
    a = gpt2.attribute(PROMPT, target=" is Paris.", method="kernel_shap", sources="prompt")
    n_p = len(gpt2.encode(PROMPT))
    assert np.isnan(a.scores[1:, n_p:]).all()
    assert a.info["undefined_cells"] == int(np.isnan(a.scores).sum() - (~a.valid_mask()).sum())
    assert np.isfinite(a.scores[:, :n_p]).all()


# ---------------------------------------------------------------- batching, seeds, format
@pytest.mark.parametrize("method", COALITION_METHODS)
def test_batched_equals_unbatched_with_small_chunks(gpt2, method):
    prompts = ["The capital of France is", "When Mary and John went to the store, John gave"]
    targets = [" Paris. The", " a drink"]
    kw = {"n_samples": 8, "replace": "remove"}
    with prefix_cache("on"):
        batched = gpt2.attribute(prompts, target=targets, method=method, internal_batch_size=7, **kw)
    for p, t, b in zip(prompts, targets, batched, strict=True):
        with prefix_cache("off"):
            single = gpt2.attribute(p, target=t, method=method, **kw)
        np.testing.assert_allclose(b.scores, single.scores, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(b.target_scores, single.target_scores, atol=1e-5)


@pytest.mark.parametrize("method", COALITION_METHODS)
def test_seeded_and_deterministic(gpt2, method):
    prompt = "When Mary and John went to the store, John gave"
    kw = {"n_samples": 6, "target": " a drink", "method": method, "exact": False} if method == "kernel_shap" \
        else {"n_samples": 6, "target": " a drink", "method": method}
    a = gpt2.attribute(prompt, seed=1, **kw)
    b = gpt2.attribute(prompt, seed=1, **kw)
    c = gpt2.attribute(prompt, seed=2, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.allclose(np.nan_to_num(a.scores), np.nan_to_num(c.scores))
    assert a.info["seed"] == 1


@pytest.mark.parametrize("method", COALITION_METHODS)
def test_result_round_trip(gpt2, method, tmp_path):
    a = gpt2.attribute(PROMPT, target=TARGET, method=method, features="word", n_samples=8)
    path = tmp_path / "a.json"
    a.save(path)
    b = lmxray.Attribution.load(path)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.info["features"] == "word" and b.info["groups"] == a.info["groups"]
    assert b.info["forward_tokens"]["rows"] >= 1


def test_foil_contrast_is_linear(gpt2):
    """Shapley values are linear in the game: phi(target - foil) = phi(target) - phi(foil)."""
    kw = {"method": "kernel_shap", "replace": "baseline"}
    t = gpt2.attribute(PROMPT, target=" is", **kw)
    f = gpt2.attribute(PROMPT, target=" of", **kw)
    c = gpt2.attribute(PROMPT, target=" is", foil=" of", **kw)
    np.testing.assert_allclose(c.scores, t.scores - f.scores, atol=1e-5, equal_nan=True)


def test_occlusion_sources_prompt_matches_captum_convention(gpt2):
    a = gpt2.attribute(PROMPT, target=TARGET, method="occlusion", replace="baseline", baseline=0,
                       sources="prompt")
    full = gpt2.attribute(PROMPT, target=TARGET, method="occlusion", replace="baseline", baseline=0)
    n_p = len(gpt2.encode(PROMPT))
    np.testing.assert_allclose(a.scores[:, :n_p], full.scores[:, :n_p], atol=1e-6)
    assert np.isnan(a.scores[:, n_p:]).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="shapley_sampling", n_samples=0), "n_samples must be an integer >= 1"),
        (dict(method="kernel_shap", exact="yes"), "exact must be"),
        (dict(method="kernel_shap", exact=True, features="token", sources="all"), None),
        (dict(method="lime", kernel_width=0), "kernel_width must be a positive number"),
        (dict(method="lime", alpha=-1), "alpha must be a non-negative number"),
        (dict(method="lime", features="paragraph"), "unknown features"),
        (dict(method="lime", features=[(0, 3), (2, 4)]), "overlap"),
        (dict(method="lime", features=[(0, 99)]), "outside"),
        (dict(method="lime", features=[(1, 6)], sources="prompt"), "covers target tokens"),
        (dict(method="lime", features=[("a", 1)]), "features must be"),
        (dict(method="lime", sources="targets"), "sources must be"),
        (dict(method="shapley_sampling", replace="mask"), "replace must be"),
        (dict(method="kernel_shap", seed=-1), "seed must be"),
    ],
)
def test_bad_input_is_one_line_error(gpt2, kwargs, match):
    if match is None:  # exact=True over too many players
        long_prompt = " ".join(["The capital of France is Paris."] * 3)
        with pytest.raises(InputError, match="exact KernelSHAP enumerates") as exc:
            gpt2.attribute(long_prompt, target=TARGET, **kwargs)
    else:
        with pytest.raises(InputError, match=match) as exc:
            gpt2.attribute(PROMPT, target=TARGET, **kwargs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("method", COALITION_METHODS)
def test_model_and_tokenizer_untouched(method):
    hf, tok = build_tiny("gpt2")
    hf.train()
    m = lmxray.load(model=hf, tokenizer=tok)
    n_tok, emb = len(tok), hf.get_input_embeddings().weight.clone()
    m.attribute(PROMPT, target=TARGET, method=method, n_samples=4, replace="baseline")
    assert len(tok) == n_tok and hf.get_input_embeddings().weight.shape == emb.shape
    assert torch.equal(hf.get_input_embeddings().weight, emb)
    assert hf.training and all(p.requires_grad for p in hf.parameters())
