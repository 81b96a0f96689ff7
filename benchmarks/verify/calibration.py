"""Calibration of the verification verdict on the zoo model (lmxray.load()).

Two parts, both resumable (rows are appended as they are measured; a rerun with the same
options skips what is done, a rerun with other options is refused):

1. cells: every registered method on the first ``--n`` verified test examples of the zoo tasks
   facts, recall and ioi; how often the faithfulness test calls the explanation faithful at
   alpha 0.05, and the full verdict (stability, completeness, convergence) on the first
   ``--full`` examples of each cell. To keep the 30 cells affordable on 2 shared CPU cores the
   removal curves' null is cut to ``k = 1`` (``--k``): those p-values are reported, never
   decide; the deciding test (faithfulness correlation vs 999 random attributions) is the same
   as ``verify``'s default. Stability and seed convergence run on the ``--full`` examples only.
2. random: the `random` method's false-positive rate, the marginal one the p-value promises:
   ``--random-draws`` draws per task, each a fresh `random` attribution (method seed 1000 + i)
   verified with a fresh null and fresh subsets (verify seed 1000 + i), examples taken in turn.
   Reported with an exact (Clopper-Pearson) 95% interval.

    PYTHONPATH=src nice -n 5 python3 benchmarks/verify/calibration.py     # writes benchmarks/results/verify.md
    PYTHONPATH=src python3 benchmarks/verify/calibration.py --n 5 --random-draws 10 --out /tmp/v.md  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

import lmxray
import lmxray.zoo as zoo
from lmxray.attribution import method_specs
from lmxray.attribution.verify import K_CORRELATION, N_SUBSETS, verify
from lmxray.evaluate.runner import DEFAULT_METHOD_PARAMS
from lmxray.io import append_synced, atomic_write_text, differing_keys, read_jsonl

TASKS = ("facts", "recall", "ioi")
ALPHA = 0.05


def _rows_file(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows measured so far (the first line holds the configuration), or a fresh file."""
    if path.exists() and path.stat().st_size:
        rows = read_jsonl(path, what="calibration rows")
        old = rows[0].get("config", {})
        if old != config:
            sys.exit(f"{path} was written with other options ({differing_keys(old, config)}); "
                     f"delete it or give the same options")
        return rows[1:]
    atomic_write_text(path, json.dumps({"config": config}) + "\n")
    return []


def _examples(task: str, n: int) -> list[Any]:
    return [e for e in zoo.dataset(task, n=n + n // 4 + 10) if e.verified][:n]


def _cell(m: Any, a: argparse.Namespace, task: str, method: str, exs: list[Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    attrs = m.attribute([e.prompt for e in exs], [e.target for e in exs], method=method,
                        **DEFAULT_METHOD_PARAMS.get(method, {}))
    t_attr, t0 = time.perf_counter() - t0, time.perf_counter()
    pvals, faithful, passed = [], [], []
    for i, attr in enumerate(attrs):
        kw = {"k": a.k} if i < a.full else {"k": a.k, "stability": "none", "seeds": 0}
        v = verify(m, attr, **kw)
        pvals.append(v.p_value)
        faithful.append(bool(v.faithful))
        if i < a.full:
            passed.append(bool(v.passed))
    return {"task": task, "method": method, "n": len(attrs), "faithful": int(sum(faithful)),
            "median_p": float(np.median([p for p in pvals if p is not None])),
            "full_verdict_n": len(passed), "passed": int(sum(passed)),
            "explain_s": round(t_attr, 1), "verify_s": round(time.perf_counter() - t0, 1),
            "load": round(os.getloadavg()[0], 1)}


def run_cells(m: Any, a: argparse.Namespace, path: Path) -> list[dict[str, Any]]:
    rows = _rows_file(path, {"full": a.full, "k": a.k})  # n is per row: a resumed run may take fewer
    done = {(r["task"], r["method"]) for r in rows}
    exs = {task: _examples(task, a.n) for task in a.tasks}
    for method in a.methods or method_specs():  # every task of a method, then the next method
        for task in a.tasks:
            if (task, method) not in done:
                rows.append(_cell(m, a, task, method, exs[task]))
                append_synced(path, json.dumps(rows[-1]) + "\n")
                print(json.dumps(rows[-1]), flush=True)
    return rows


def run_random(m: Any, a: argparse.Namespace, path: Path) -> list[dict[str, Any]]:
    config = {"random_draws": a.random_draws, "pool": a.pool}
    rows = _rows_file(path, config)
    done = {(r["task"], r["draw"]) for r in rows}
    for task in a.tasks:
        exs = _examples(task, a.pool)
        for i in range(a.random_draws):
            if (task, i) in done:
                continue
            e = exs[i % len(exs)]
            attr = m.attribute(e.prompt, e.target, method="random", seed=1000 + i)
            v = verify(m, attr, k=1, stability="none", seeds=0, seed=1000 + i)
            row = {"task": task, "draw": i, "example": i % len(exs), "p": v.p_value,
                   "faithful": bool(v.faithful)}
            append_synced(path, json.dumps(row) + "\n")
            rows.append(row)
        print(task, "random draws done", flush=True)
    return rows


def _rate(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact") if n else None
    return f"{k}/{n} = {k / max(n, 1):.1%} (95% CI {ci.low:.1%}-{ci.high:.1%})" if ci else "n/a"


def write(cells: list[dict[str, Any]], rnd: list[dict[str, Any]], a: argparse.Namespace) -> None:
    cmd = (f"PYTHONPATH=src nice -n 5 python3 benchmarks/verify/calibration.py --n {a.n} --full {a.full} "
           f"--k {a.k} --random-draws {a.random_draws} --pool {a.pool}"
           + (f" --methods {','.join(a.methods)}" if a.methods else "")
           + (f" --tasks {','.join(a.tasks)}" if list(a.tasks) != list(TASKS) else ""))
    fp = sum(r["faithful"] for r in rnd)
    lines = [
        "# Verification calibration (zoo model, verified test examples)", "",
        f"Command: `{cmd}`", "",
        f"faithful = the permutation test's p <= {ALPHA} (mean over target steps of the faithfulness "
        f"correlation over {N_SUBSETS} random subsets per step, vs {K_CORRELATION} random attributions; "
        "the one statistic that decides). Removal-curve null cut to "
        f"k = {a.k} here (reported, never decides). passed = the whole verdict (faithful, and no "
        f"failing stability/completeness/convergence check) on the first {a.full} examples of each cell.", "",
        "## `random`: false-positive rate (marginal: fresh attribution, null and subsets per draw)", "",
        f"**All tasks: {_rate(fp, len(rnd))}**; promised <= {ALPHA:.0%}.", "",
        "| task | draws | called faithful | p <= 0.10 | p <= 0.50 | mean p |", "|---|---|---|---|---|---|",
    ]
    for task in a.tasks:
        ps = np.array([r["p"] for r in rnd if r["task"] == task], dtype=float)
        if ps.size:
            lines.append(f"| {task} | {ps.size} | {_rate(int((ps <= ALPHA).sum()), ps.size)} | "
                         f"{(ps <= 0.1).mean():.1%} | {(ps <= 0.5).mean():.1%} | {ps.mean():.3f} |")
    lines += ["", "## Every registered method on facts, recall and ioi", "",
              "n per cell: the first n verified test examples of the task (15, or 8 for the cells measured "
              "after the first ones showed what a cell costs on this machine).", "",
              "| task | method | n | faithful | median p | passed (full verdict) | explain s | verify s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in cells:
        lines.append(f"| {r['task']} | {r['method']} | {r['n']} | {r['faithful']}/{r['n']} = "
                     f"{r['faithful'] / r['n']:.0%} | {r['median_p']:.3f} | {r['passed']}/{r['full_verdict_n']} | "
                     f"{r['explain_s']} | {r['verify_s']} |")
    loads = [r["load"] for r in cells]
    if loads:
        lines += ["", f"Machine: 2 CPU cores shared with other jobs (1-minute load average "
                      f"{min(loads)}-{max(loads)} during the cells); times are wall-clock."]
    atomic_write_text(a.out, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="examples per task and method")
    ap.add_argument("--full", type=int, default=2, help="examples per cell with the full verdict")
    ap.add_argument("--k", type=int, default=1, help="removal-curve null draws (reported only)")
    ap.add_argument("--random-draws", type=int, default=120, help="random draws per task")
    ap.add_argument("--pool", type=int, default=40, help="examples per task the random draws cycle over")
    ap.add_argument("--methods", type=lambda v: v.split(","), default=None, help="comma list (default: all)")
    ap.add_argument("--tasks", type=lambda v: v.split(","), default=list(TASKS), help="comma list")
    ap.add_argument("--only", choices=("cells", "random", "both"), default="both")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/verify.md"))
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    m = lmxray.load()
    rnd_path, cell_path = a.out.with_name(a.out.stem + "_random.jsonl"), a.out.with_name(a.out.stem + "_cells.jsonl")
    rnd = run_random(m, a, rnd_path) if a.only in ("random", "both") else []
    cells = run_cells(m, a, cell_path) if a.only in ("cells", "both") else []
    if a.only != "both":  # a part alone: the other one as far as it got
        other = cell_path if a.only == "random" else rnd_path
        got = read_jsonl(other, what="calibration rows")[1:] if other.exists() else []
        cells, rnd = (got, rnd) if a.only == "random" else (cells, got)
    write(cells, rnd, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
