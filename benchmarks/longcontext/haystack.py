"""The evidence sentence among distractors: on verified ``haystack`` zoo examples, how often each
context-attribution method ranks the evidence sentence first (ground truth by construction).

    nice python benchmarks/longcontext/haystack.py --n 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import lmxray
from lmxray import zoo
from lmxray.attribution.context import attribute_context
from lmxray.zoo import tasks

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "longcontext-haystack.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablations", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    items = tasks.generate("haystack", n=args.n, seed=args.seed)
    ex = zoo.dataset("haystack", n=args.n, seed=args.seed)
    verified = [it for it, e in zip(items, ex, strict=True) if e.verified]
    m = lmxray.load()
    lines = [
        f"### Evidence sentence among distractors (zoo task haystack, lmxray-tiny, {len(verified)} "
        f"verified of {args.n} examples, 6-10 sentences each)", "",
        "| method | evidence ranked first | mean top-1 log-prob drop | seconds |", "|---|---|---|---|",
    ]
    for method in ("loo", "ablation", "shapley"):
        hits, drop, t0 = 0, 0.0, time.perf_counter()
        for it in verified:
            end = it.meta["context_end"]
            r = attribute_context(
                m, it.prompt[:end], query=it.prompt[end:], target=it.target, method=method,
                sources=[it.prompt[a:b] for a, b in it.meta["sources"]],
                n_ablations=args.ablations, n_heldout=0, top_k=(1,),
            )
            hits += r.ranking()[0] == it.meta["evidence_source"]
            drop += r.metrics["topk_drop"][1]
        sec = time.perf_counter() - t0
        n = max(1, len(verified))
        lines.append(f"| {method}{f' ({args.ablations})' if method == 'ablation' else ''} | "
                     f"{hits}/{len(verified)} ({hits / n:.0%}) | {drop / n:.2f} | {sec:.1f} |")
        print(lines[-1], flush=True)
    lines.append("")
    write_section(OUT, lines)


if __name__ == "__main__":
    main()
