"""Shared fixtures: tiny random-init causal LMs of several families, built from config (seeded)
with a small byte-level BPE tokenizer trained on an inline corpus. No network."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The quick brown fox jumps over the lazy dog. A dog is not a fox.",
    "k3=blue k7=red k1=green ; k7 = red. Reviews: great film, bad plot.",
    "Berlin is in Germany, Madrid is in Spain and Lisbon is in Portugal.",
] * 20

FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=64,
    )


def tiny_config(family: str, vocab_size: int):
    from transformers import (
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if family == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **common)
    if family == "llama":
        return LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, **common,
        )
    if family == "qwen2":
        return Qwen2Config(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, **common,
        )
    if family == "mistral":
        return MistralConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, **common,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            max_position_embeddings=64, **common,
        )
    if family == "opt":
        return OPTConfig(
            num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=32, **common,
        )
    raise ValueError(family)


def build_tiny(family: str, seed: int = 0):
    """A tiny random-init HF causal LM of ``family`` in eval mode, and the shared tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tok)))
    model.eval()
    return model, tok


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 folder (config.json, model.safetensors, tokenizer files)."""
    out = tmp_path_factory.mktemp("tiny-gpt2")
    model, tok = build_tiny("gpt2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    model, tok = build_tiny("llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
