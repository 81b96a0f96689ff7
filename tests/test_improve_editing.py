"""ROME rank-one editing: the update against the constrained least-squares solution (KKT oracle),
the edited MLP writing exactly v* at the key, weights restored bit-exactly, copies left apart,
Conv1D (GPT-2) orientation, the key covariance against a manual sum, the value optimisation
raising the new object's probability, and errors."""

from __future__ import annotations

import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError, MethodError
from lmxray.hooks import run_with_cache
from lmxray.improve.editing import counterfactuals, evaluate_edits, key_covariance, rome_edit

PROMPT, SUBJECT = "The capital of France is", "France"
TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The quick brown fox jumps over the lazy dog.",
    "Berlin is in Germany, Madrid is in Spain.",
] * 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(family: str = "llama") -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


def _edit(m, layer=0, **kw):
    cov = key_covariance(m, layer, TEXTS)
    return rome_edit(
        m, PROMPT, SUBJECT, " Rome", layer=layer, cov=cov, steps=kw.pop("steps", 10), **kw
    ), cov


def test_key_covariance_matches_a_manual_sum():
    m = model()
    c = key_covariance(m, 0, TEXTS[:4], batch_size=3, ridge=0.0)
    acc, n = 0, 0
    for t in TEXTS[:4]:
        k = run_with_cache(m, t, cache=["layers.0.mlp.hidden"])["layers.0.mlp.hidden"][0].double()
        acc = acc + k.T @ k
        n += k.shape[0]
    assert torch.allclose(c, acc / n, rtol=1e-6, atol=1e-9)


def test_update_is_the_constrained_least_squares_solution():
    """min_ΔW tr(ΔW C ΔWᵀ) s.t. ΔW k* = v* - W k*: solve the KKT system row by row (fp64)."""
    m = model()
    ed, cov = _edit(m)
    pos = ed.info["position"]
    k = run_with_cache(m, PROMPT, cache=["layers.0.mlp.hidden"])["layers.0.mlp.hidden"][
        0, pos
    ].double()
    r = ed.value.double()
    d = k.shape[0]
    kkt = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    kkt[:d, :d] = 2 * cov
    kkt[:d, d] = k
    kkt[d, :d] = k
    rhs = torch.zeros(d + 1, r.shape[0], dtype=torch.float64)
    rhs[d] = r
    sol = torch.linalg.solve(kkt, rhs)[:d].T  # [d_model, d_mlp]
    assert torch.allclose(ed.delta().double(), sol, rtol=1e-4, atol=1e-7 * float(sol.abs().max()))
    sv = torch.linalg.svdvals(ed.delta().double())
    assert sv[0] > 0 and sv[1] < 1e-5 * sv[0]  # rank one (up to float32 rounding)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_edited_mlp_writes_v_star_at_the_key_and_weights_come_back(family):
    m = model(family)
    ed, _ = _edit(m)
    site = "layers.0.mlp.out"
    before = {k: v.detach().clone() for k, v in m.hf.state_dict().items()}
    clean = run_with_cache(m, PROMPT, cache=[site])[site][0]
    pos = ed.info["position"]
    with ed.applied(m):
        edited = run_with_cache(m, PROMPT, cache=[site])[site][0]
    assert torch.allclose(
        edited[pos] - clean[pos], ed.value, atol=1e-4 * max(1.0, float(ed.value.norm()))
    )
    # positions before the subject's last token hold other keys: changed only by their key overlap
    after = {k: v.detach().clone() for k, v in m.hf.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(RuntimeError):
        with ed.applied(m):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in m.hf.state_dict().items())
    copy = ed.apply(m)
    assert copy.hf is not m.hf
    assert all(torch.equal(before[k], v) for k, v in m.hf.state_dict().items())
    with ed.applied(m):
        ref = run_with_cache(m, PROMPT, cache=[site])[site]
    assert torch.allclose(run_with_cache(copy, PROMPT, cache=[site])[site], ref, atol=1e-6)


def test_value_optimisation_raises_the_new_object():
    m = model()
    ids = m.encode(PROMPT)
    tgt = m.encode_target(" Rome")
    with torch.no_grad():
        p0 = float(torch.softmax(m.hf(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tgt[0]])
    ed, _ = _edit(m, steps=25, lr=1.0)
    assert ed.info["p_target"] > p0
    edited = ed.apply(m)
    with torch.no_grad():
        p1 = float(
            torch.softmax(edited.hf(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tgt[0]]
        )
    assert p1 > p0
    assert not any(
        p.grad is not None for p in m.hf.parameters()
    )  # δ was optimised with autograd.grad


def test_counterfactuals_stay_in_the_relation():
    facts = [
        {"answer": " Paris", "relation": "capital"},
        {"answer": " Rome", "relation": "capital"},
        {"answer": " euro", "relation": "currency"},
        {"answer": " yen", "relation": "currency"},
    ]
    new = counterfactuals(facts, seed=3)
    assert new[0] == " Rome" and new[1] == " Paris" and new[2] == " yen" and new[3] == " euro"
    with pytest.raises(InputError, match="no other answer"):
        counterfactuals([{"answer": " x", "relation": "solo"}])


def test_errors():
    m = model()
    cov = key_covariance(m, 0, TEXTS[:2])
    with pytest.raises(InputError, match="out of range"):
        rome_edit(m, PROMPT, SUBJECT, " Rome", layer=7, cov=cov)
    with pytest.raises(InputError, match="does not occur"):
        rome_edit(m, PROMPT, "Spain", " Rome", layer=0, cov=cov)
    with pytest.raises(InputError, match="sample texts"):
        key_covariance(m, 0, [])
    facts = [
        {
            "prompt": PROMPT,
            "subject": SUBJECT,
            "answer": " Paris",
            "relation": "capital",
            "subject_text": SUBJECT,
        }
    ]
    with pytest.raises(InputError, match="known facts"):
        evaluate_edits(m, facts, n_edits=1, layer=0, progress=False)


def test_families_with_a_norm_after_the_mlp_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = Gemma2Config(
        vocab_size=len(tok),
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    m = lmxray.load(model=Gemma2ForCausalLM(cfg).eval(), tokenizer=tok)
    with pytest.raises(MethodError, match="norm after"):
        rome_edit(m, PROMPT, SUBJECT, " Rome", layer=0, cov=torch.eye(64, dtype=torch.float64))
