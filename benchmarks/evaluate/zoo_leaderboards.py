#!/usr/bin/env python3
"""Leaderboards of every registered attribution method on the zoo model's tasks.

    python benchmarks/evaluate/zoo_leaderboards.py [--n 200] [--tasks facts,recall,ioi]
                                                   [--out benchmarks/evaluate/results]

For each task: ``lmxray.evaluate`` with all methods (``random`` is the control), all metric
groups and the cascading sanity check, on the shipped ``lmxray-tiny`` (``lmxray.load()``). Rows
stream to ``OUT/<task>.jsonl`` (rerunning resumes), and ``OUT/<task>.csv|.html|.png`` hold the
leaderboard. The markdown printed at the end is what ``benchmarks/evaluate/README.md`` shows.
Ground-truth metrics count the examples whose evidence the model verifiably uses.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

COLUMNS = ["comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "decision_flip",
           "log_odds", "top1_hit", "topk_hit", "mrr", "sanity_rho", "attribution_seconds"]


def markdown(task: str, board, n_verified: int, n: int) -> str:
    cols = [c for c in COLUMNS if c in board.columns]
    lines = [f"**{task}** ({n} examples, ground truth on {n_verified} verified)", "",
             "| method | " + " | ".join(cols) + " | sanity |",
             "|---" * (len(cols) + 2) + "|"]
    for m, rec in board.iterrows():
        cells = ["–" if rec[c] != rec[c] else f"{rec[c]:.3g}" for c in cols]
        passed = rec.get("sanity_passed")
        verdict = "–" if passed is None or passed != passed else ("pass" if passed else "FAIL")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tasks", default="facts,recall,ioi")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--sanity-examples", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    torch.set_num_threads(2)
    import lmxray
    from lmxray.evaluate import evaluate, load_examples

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = lmxray.load()
    texts = []
    for task in args.tasks.split(","):
        t0 = time.time()
        examples, name = load_examples(m, task, n=args.n)
        ev = evaluate(m, examples, methods="all", metrics="all,sanity", out=out / f"{task}.jsonl",
                      sanity_examples=args.sanity_examples, name=name)
        ev.show()
        ev.to_csv(out / f"{task}.csv")
        ev.to_html(out / f"{task}.html")
        ev.to_png(out / f"{task}.png")
        board = ev.leaderboard()
        nv = int(board["n_verified"].max()) if "n_verified" in board.columns else 0
        texts.append(markdown(task, board, nv, len(examples)))
        print(f"{task}: {time.time() - t0:.0f} s", flush=True)
    print("\n\n".join(texts))


if __name__ == "__main__":
    main()
