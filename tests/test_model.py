"""Model wrapper: parity with plain HF for every family, padding, loading, errors, no mutation."""

from __future__ import annotations

import json

import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError, ModelLoadError

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave"]


def test_logits_equal_plain_hf(family):
    hf, tok = build_tiny(family)
    m = lmxray.load(model=hf, tokenizer=tok)
    ids = tok(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        ref = hf(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits[0]
    ours = m.logits(PROMPTS[1])
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_left_padded_batch_equals_single(family):
    hf, tok = build_tiny(family)
    m = lmxray.load(model=hf, tokenizer=tok)
    seqs = [m.encode(p) for p in PROMPTS]
    ids, mask, pos = m.pad_batch(seqs)
    assert ids.shape[1] == max(len(s) for s in seqs)
    assert mask[0, : ids.shape[1] - len(seqs[0])].sum() == 0  # left padding
    with torch.no_grad():
        batched = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    for i, s in enumerate(seqs):
        single = m.logits(s)
        assert torch.allclose(batched[i, ids.shape[1] - len(s):], single, atol=1e-5), family


def test_logits_to_keep_matches_full(family):
    hf, tok = build_tiny(family)
    m = lmxray.load(model=hf, tokenizer=tok)
    ids, mask, pos = m.pad_batch([m.encode(PROMPTS[0])])
    with torch.no_grad():
        full = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        last = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=3).logits
    assert last.shape[1] == 3
    assert torch.allclose(full[:, -3:], last, atol=1e-6)


def test_encode_adds_bos_only_to_prompt():
    hf, tok = build_tiny("gpt2")
    m = lmxray.load(model=hf, tokenizer=tok)
    assert m.encode("Paris")[0] == tok.bos_token_id
    assert tok.bos_token_id not in m.encode_target(" Paris")
    assert "".join(m.token_strings(m.encode_target(" Paris"))) == " Paris"


def test_generate_is_greedy():
    hf, tok = build_tiny("llama")
    m = lmxray.load(model=hf, tokenizer=tok)
    ids = m.encode(PROMPTS[0])
    new = m.generate_ids(ids, 4)
    # greedy by hand
    seq = list(ids)
    for _ in range(len(new)):
        seq.append(int(m.logits(seq)[-1].argmax()))
    assert new == seq[len(ids):]


def test_chat_template(tiny_dir):
    m = lmxray.load(str(tiny_dir))
    with pytest.raises(InputError, match="chat template"):
        m.chat([{"role": "user", "content": "hi"}])
    m.tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = m.chat([{"role": "user", "content": "hi"}])
    assert text == "<user>hi\n<assistant>"  # BOS stripped: encode() adds it once
    assert m.encode(text).count(m.tokenizer.bos_token_id) == 1


def test_load_from_folder_and_dtype(tiny_dir):
    m = lmxray.load(str(tiny_dir), dtype="float32", device="cpu")
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    assert m.n_layers == 2 and m.d_model == 32 and m.max_length == 64
    assert "Model(" in repr(m)


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        lmxray.load(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        lmxray.load(str(tmp_path))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a causal"):
        lmxray.load(str(bert))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    with pytest.raises(ModelLoadError, match="not a causal"):
        lmxray.load(str(t5))
    with pytest.raises(InputError, match="tokenizer"):
        lmxray.load(model=build_tiny("gpt2")[0])
    with pytest.raises(InputError, match="dtype"):
        lmxray.load(str(tmp_path), dtype="float8")


def test_non_causal_object_rejected():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                intermediate_size=16, vocab_size=50))
    with pytest.raises(ModelLoadError, match="not a causal"):
        lmxray.load(model=bert, tokenizer=build_tiny("gpt2")[1])


def test_run_and_intervene_methods():
    from lmxray.hooks import zero

    hf, tok = build_tiny("llama")
    m = lmxray.load(model=hf, tokenizer=tok)
    c = m.run(PROMPTS[0], cache=["resid_post"])
    assert c["layers.1.resid_post"].shape[-1] == m.d_model
    before = m.logits(PROMPTS[0])
    with m.intervene({"layers.1.mlp.out": zero()}):
        ablated = m.logits(PROMPTS[0])
    assert not torch.allclose(before, ablated)
    assert torch.allclose(m.logits(PROMPTS[0]), before)  # hooks gone
