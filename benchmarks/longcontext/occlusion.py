"""Occlusion over long prompts: lmxray (prefix reuse from the KV cache) against Captum's
FeatureAblation on the same model, prompt, target and baseline (token id 0), with a numeric
agreement check, the token positions computed, and the time per doubling of the prompt.

    nice python benchmarks/longcontext/occlusion.py --lengths 256 512 1024 2048 --captum 1024
    nice python benchmarks/longcontext/occlusion.py --small ...   # GPT-2 2 x 128 (busy CPUs)

Captum is given the generous form: one forward per perturbation that scores all target tokens
teacher forced (its LLMAttribution runs one forward per target token), batched
``--captum-batch`` perturbations per evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_model, prompt_of, write_section  # noqa: E402

from lmxray.attribution._prefix import count_forward_tokens  # noqa: E402

TARGET = " the copyright notice"
OUT = Path(__file__).resolve().parents[1] / "results" / "longcontext-occlusion.md"


def lmxray_run(m, prompt):
    with count_forward_tokens() as st:
        t0 = time.perf_counter()
        a = m.attribute(prompt, target=TARGET, method="occlusion", replace="baseline", baseline=0,
                        sources="prompt")
        sec = time.perf_counter() - t0
    return a, sec, st


def captum_run(m, prompt, batch):
    from captum.attr import FeatureAblation

    ids = m.encode(prompt)
    tgt = m.encode_target(TARGET)
    n_p = len(ids)

    def total_logprob(x):
        t = torch.tensor(tgt[:-1]).expand(x.shape[0], -1)
        logits = m.hf(input_ids=torch.cat([x, t], 1)).logits[:, n_p - 1:].float()
        lp = torch.log_softmax(logits, -1)
        return lp[:, torch.arange(len(tgt)), torch.tensor(tgt)].sum(-1)

    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        attr = FeatureAblation(total_logprob).attribute(
            x, baselines=0, feature_mask=torch.arange(n_p)[None], perturbations_per_eval=batch
        )
    return attr[0].numpy(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--captum", type=int, nargs="*", default=[1024])
    ap.add_argument("--captum-batch", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="GPT-2 2 x 128 instead of 6 x 512")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dims = dict(n_layer=2, n_embd=128, n_head=4) if args.small else {}
    m = bench_model(n_positions=max(args.lengths) + 16, **dims)
    name = "GPT-2 2x128 (small)" if args.small else "GPT-2 6x512 (bench model)"
    lmxray_run(m, prompt_of(m, 32))  # warm-up
    rows, prev = [], None
    for n in args.lengths:
        prompt = prompt_of(m, n)
        a, sec, st = lmxray_run(m, prompt)
        row = {"n": n, "sec": sec, "computed": st.computed_tokens, "naive": st.naive_tokens,
               "forwards": st.forwards}
        row["growth"] = sec / prev["sec"] if prev else None
        row["work"] = st.naive_tokens / prev["naive"] if prev else None
        if n in args.captum:
            ref, csec = captum_run(m, prompt, args.captum_batch)
            ours = np.nansum(a.scores[:, : a.prompt_length], axis=0)
            row["captum_sec"], row["max_diff"] = csec, float(np.abs(ours - ref).max())
        rows.append(row)
        prev = row
        print(row, flush=True)
    lines = [
        f"### Occlusion over long prompts ({name}, target {TARGET!r}, baseline id 0, prompt "
        f"sources, {args.threads} threads)", "",
        "| prompt tokens | lmxray s | x per doubling | naive work x | computed / naive tokens | "
        "forwards | Captum FeatureAblation s | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        cap = r.get("captum_sec")
        lines.append(
            f"| {r['n']} | {r['sec']:.2f} | {fmt(r['growth'], '.2f')} | {fmt(r['work'], '.2f')} | "
            f"{r['computed']:,} / {r['naive']:,} ({r['computed'] / r['naive']:.2f}) | "
            f"{r['forwards']} | {fmt(cap, '.2f')} | "
            f"{'' if cap is None else format(cap / r['sec'], '.1f') + 'x'} | "
            f"{fmt(r.get('max_diff'), '.1e')} |"
        )
    lines.append("")
    write_section(OUT, lines)


if __name__ == "__main__":
    main()
