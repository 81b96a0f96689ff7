"""Gradient methods at ~8k tokens within a memory budget: a random-init Llama-style model (RoPE,
8192-token context, the test suite's recipe scaled up), saliency and integrated gradients,
chunked by ``memory_budget``; peak process memory (max RSS) reported.

    nice python benchmarks/longcontext/gradients.py --tokens 8000 --budget 1e9
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import licence_text, tokenizer, write_section  # noqa: E402

import lmxray  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "longcontext-gradients.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--budget", type=float, default=1e9)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    m = lmxray.load(model=AutoModelForCausalLM.from_config(cfg).eval(), tokenizer=tok)
    ids = tok(licence_text(), add_special_tokens=False)["input_ids"][: args.tokens]
    prompt = tok.decode(ids)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [f"### Gradient methods at {len(m.encode(prompt))} tokens (Llama-style, RoPE, 8k context, "
             f"{args.layers} x {args.hidden}; memory_budget {args.budget / 1e9:.1f} GB)", "",
             "| method | seconds | peak RSS (MB) | RSS before (MB) | out-of-memory back-offs |",
             "|---|---|---|---|---|"]
    for method, kw in (("saliency", {}), ("integrated_gradients", {"n_steps": 4})):
        t0 = time.perf_counter()
        a = m.attribute(prompt, target=" the copyright", method=method,
                        memory_budget=int(args.budget), **kw)
        sec = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(f"| {method} | {sec:.1f} | {peak:.0f} | {rss0:.0f} | "
                     f"{len(a.info.get('oom_backoff', []))} |")
        print(lines[-1], flush=True)
    lines.append("")
    write_section(OUT, lines)


if __name__ == "__main__":
    main()
