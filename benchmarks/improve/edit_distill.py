"""Issue 20 benchmark: ROME at seeds 0-4 and two untuned seeds (11, 23), MEMIT with 100 edits at
once, and rationale distillation's data-efficiency curve.

    PYTHONPATH=src python3 benchmarks/improve/edit_distill.py [--part rome|memit|distill|all]

Each part prints its table and writes benchmarks/results/improve_edit_distill_<part>.json; the
markdown summary benchmarks/results/improve_edit_distill.md is rebuilt from the JSON files there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import lmxray
from lmxray.cli.internals import zoo_facts
from lmxray.io import atomic_write_text, dumps

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROME_SEEDS = (0, 1, 2, 3, 4, 11, 23)  # 11 and 23 were never tuned on
METRICS = ("efficacy", "paraphrase", "specificity", "consistency", "fluency")


def part_rome(m, facts) -> dict:
    from lmxray.improve.editing import evaluate_edits

    rows = []
    for seed in ROME_SEEDS:
        t = time.time()
        r = evaluate_edits(m, facts, n_edits=30, compare_random=False, seed=seed, progress=False)
        row = {"seed": seed, "layer": r.layer, "wall_s": round(time.time() - t, 1),
               **{k: r.rows["located"].get(k) for k in METRICS}, "n": r.rows["located"]["n"]}
        print(row, flush=True)
        rows.append(row)
    return {"rows": rows}


def part_memit(m, facts) -> dict:
    from lmxray.improve.memit import evaluate_memit

    t = time.time()
    r = evaluate_memit(m, facts, n_edits=100, seed=0, progress=False)
    out = {"rows": r.rows, "info": r.info, "wall_s": round(time.time() - t, 1)}
    print(out, flush=True)
    return out


def _distill_seed(seed: int):
    from lmxray.improve.distill import distill_curve

    torch.set_num_threads(1)
    return distill_curve(seeds=(seed,), progress=False)


def part_distill(m, facts) -> dict:
    """The curve at seeds 0-2, one process per seed (each single-threaded), merged."""
    from concurrent.futures import ProcessPoolExecutor

    t, load0 = time.time(), os.getloadavg()[0]
    with ProcessPoolExecutor(3) as pool:
        parts = list(pool.map(_distill_seed, (0, 1, 2)))
    r = parts[0]
    for v in r.accuracy:
        r.accuracy[v] = [[x for p in parts for x in p.accuracy[v][i]]
                         for i in range(len(r.fractions))]
    r.seeds = [s for p in parts for s in p.seeds]
    summ = r.summary()
    rows = ["| data | examples | " + " | ".join(summ) + " | difference |", "|---|---|---|---|---|"]
    for i, f in enumerate(r.fractions):
        diff = [b - a for a, b in zip(*(r.accuracy[v][i] for v in summ), strict=True)]
        rows.append(f"| {f:.0%} | {round(f * r.n_train)} | "
                    + " | ".join(f"{summ[v][i][0]:.3f} ± {summ[v][i][1]:.3f}" for v in summ)
                    + f" | {sum(diff) / len(diff):+.3f} (per seed {', '.join(f'{d:+.2f}' for d in diff)}) |")
    wall = round(time.time() - t, 1)
    load = f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    md = "\n".join([*rows, "", f"Settings: {r.config}. Wall {wall} s on the shared CPU ({load})."])
    print(r.table(), "\n" + md, flush=True)
    return {**r.to_dict(), "wall_s": wall, "load": load, "markdown": md}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown() -> str:
    lines = ["# Issue 20: editing that holds, and rationale distillation", "",
             "Command: `PYTHONPATH=src python3 benchmarks/improve/edit_distill.py --part all` "
             "(embedded model lmxray-tiny, CPU).", ""]
    p = RESULTS / "improve_edit_distill_rome.json"
    if p.exists():
        d = json.loads(p.read_text())
        lines += ["## ROME, 30 single edits per seed (seeds 11 and 23 never tuned on)", "",
                  "| seed | layer | n | " + " | ".join(METRICS) + " | wall s |",
                  "|---" * (len(METRICS) + 4) + "|"]
        for r in d["rows"]:
            lines.append(f"| {r['seed']} | {r['layer']} | {r['n']} | "
                         + " | ".join(_fmt(r.get(k)) for k in METRICS) + f" | {r['wall_s']} |")
        lines.append("")
    p = RESULTS / "improve_edit_distill_memit.json"
    if p.exists():
        d = json.loads(p.read_text())
        lines += [f"## MEMIT, 100 edits at once (layers {d['info'].get('layers')})", "",
                  "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, r in d["rows"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for k in METRICS) + " |")
        lines.append("")
    p = RESULTS / "improve_edit_distill_distill.json"
    if p.exists():
        d = json.loads(p.read_text())
        lines += ["## Rationale distillation (label accuracy, mean ± sd over seeds 0-2)", "",
                  "Command: `PYTHONPATH=src nice -n 5 python3 benchmarks/improve/edit_distill.py "
                  "--part distill`; the difference is label + rationale minus label only.", "",
                  d.get("markdown", ""), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["rome", "memit", "distill", "all"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = lmxray.load()
    facts = zoo_facts(n=None)
    parts = ["rome", "memit", "distill"] if args.part == "all" else [args.part]
    for name in parts:
        res = globals()[f"part_{name}"](m, facts)
        atomic_write_text(RESULTS / f"improve_edit_distill_{name}.json", dumps(res, indent=1) + "\n")
    atomic_write_text(RESULTS / "improve_edit_distill.md", markdown())


if __name__ == "__main__":
    main()
