"""Shared pieces of the long-context benchmarks: the bench model (shared/bench recipe: GPT-2,
random init, seed 0, the licence-trained BPE tokenizer) at a chosen size and context, and
prompts of an exact token length cut from local licence text."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

import torch

BENCH = Path(os.environ.get("LMXRAY_BENCH", "/work/shared/bench/build_bench_model.py"))
CACHE = Path(os.environ.get("LMXRAY_BENCH_CACHE", "/tmp/lmxray-longcontext-tok"))


def tokenizer():
    """The bench tokenizer (trained once, cached in ``CACHE``)."""
    from transformers import PreTrainedTokenizerFast

    if not (CACHE / "tokenizer.json").exists():
        spec = importlib.util.spec_from_file_location("build_bench_model", BENCH)
        mod = importlib.util.module_from_spec(spec)
        sys.argv = [str(BENCH), str(CACHE)]
        spec.loader.exec_module(mod)
        tok, _ = mod.train_tokenizer()
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     pad_token="<pad>")
        hf.model_max_length = 8192
        hf.save_pretrained(CACHE)
    return PreTrainedTokenizerFast.from_pretrained(CACHE)


def bench_model(n_layer: int = 6, n_embd: int = 512, n_head: int = 8, n_positions: int = 2048):
    """The bench GPT-2 (6 x 512 by default) with a longer position table, random init seed 0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import lmxray

    tok = tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=len(tok),
                     n_positions=n_positions, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return lmxray.load(model=GPT2LMHeadModel(cfg).eval(), tokenizer=tok)


def issue_model(n_positions: int = 1024):
    """The shared bench model (GPT-2 6 x 512, exactly as ``build_bench_model.py`` builds it:
    seed 0, n_positions 1024), with its position table extended to ``n_positions`` when longer:
    rows 0..1023 are the bench model's, the new rows drawn like GPT-2's init (normal, std 0.02,
    seed 1). Every other weight is the bench model's, so sequences of up to 1024 positions get
    exactly the bench model's numbers and the cost per position is the bench model's."""
    from transformers import GPT2LMHeadModel

    import lmxray

    bench = bench_model(n_positions=1024)
    if n_positions <= 1024:
        return bench
    cfg = bench.hf.config.__class__.from_dict({**bench.hf.config.to_dict(),
                                               "n_positions": n_positions})
    hf = GPT2LMHeadModel(cfg).eval()
    state = dict(bench.hf.state_dict())
    wpe = torch.empty(n_positions, cfg.n_embd)
    wpe[:1024] = state["transformer.wpe.weight"]
    wpe[1024:] = torch.randn(n_positions - 1024, cfg.n_embd,
                             generator=torch.Generator().manual_seed(1)) * 0.02
    state["transformer.wpe.weight"] = wpe
    hf.load_state_dict(state)
    return lmxray.load(model=hf, tokenizer=bench.tokenizer)


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def licence_text() -> str:
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    return "\n".join(Path(f).read_text(errors="replace") for f in files if os.path.isfile(f))


def prompt_of(model, n_tokens: int, offset: int = 0) -> str:
    """Licence text that encodes to exactly ``n_tokens`` tokens (BOS not counted)."""
    ids = model.tokenizer(licence_text(), add_special_tokens=False)["input_ids"]
    n = n_tokens
    for _ in range(8):
        text = model.tokenizer.decode(ids[offset:offset + n])
        got = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if got == n_tokens:
            return text
        n += n_tokens - got
    return text


def sentences(text: str, n: int) -> list[str]:
    """The first ``n`` sentences of ``text`` (split after . ! ? and whitespace), whitespace kept."""
    import re

    parts = re.split(r"(?<=[.!?])(\s+)", " ".join(text.split()))
    out: list[str] = []
    for i in range(0, len(parts) - 1, 2):
        s = parts[i] + parts[i + 1]
        if len(s.split()) >= 4:
            out.append(s)
        if len(out) == n:
            break
    return out


def write_section(out: Path, lines: list[str]) -> None:
    """Write a results section (markdown lines) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
