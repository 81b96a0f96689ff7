"""Dataset jobs: scaling from 1 to 2 Ray workers, and the overhead against in process.

One evaluate run (zoo task, methods, faithfulness + plausibility) timed three ways in one
process: in process, on a local Ray cluster with 1 actor and with 2 actors, every one with
``--threads`` torch threads (default 1: on a shared machine, several spinning OpenMP threads per
process make the timings meaningless; with one thread each, 2 workers use 2 cores). Ray's start-up and the actors' model
loading are timed apart from the job. The rows of every run are checked equal to the in-process
rows (largest difference of any metric). Writes a Markdown table.

    python benchmarks/jobs/run.py                          # 24 facts, writes benchmarks/results/jobs.md
    python benchmarks/jobs/run.py --n 4 --out -            # a quick look (the test runs this)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rows(ev: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "attribution_seconds"} for r in ev.rows]


def max_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    assert [(r["example"], r["method"]) for r in a] == [(r["example"], r["method"]) for r in b], "rows differ"
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for k, v in x.items():
            if isinstance(v, int | float | list) and not isinstance(v, bool) and v is not None:
                d = np.nan_to_num(np.abs(np.asarray(v, float) - np.asarray(y[k], float)))
                worst = max(worst, float(d.max()) if d.size else 0.0)
    return worst


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="facts")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--methods", default="integrated_gradients,occlusion")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process / actor")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per executor (median)")
    ap.add_argument("--out", default="benchmarks/results/jobs.md", help="Markdown file, or - for stdout only")
    args = ap.parse_args(argv)

    import ray
    import torch

    import lmxray
    from lmxray.evaluate import evaluate, load_examples
    from lmxray.jobs import ModelSpec, RayExecutor

    cpus = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    model = lmxray.load()
    examples, _ = load_examples(model, args.task, n=args.n)
    kw = {"methods": args.methods.split(","), "metrics": ["faithfulness", "plausibility"], "n_steps": 10,
          "batch_size": args.batch_size, "progress": False, "method_params": {"integrated_gradients": {"n_steps": 16}}}
    load0 = os.getloadavg()[0]
    evaluate(model, examples[:1], **kw)  # warm-up
    t0 = time.perf_counter()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_ray = time.perf_counter() - t0
    executors: dict[str, Any] = {"in process": None}
    starts: dict[str, float | None] = {"in process": None}
    for workers in (1, 2):  # 3 actors live together (3 logical CPUs), each with --threads threads
        t0 = time.perf_counter()
        name = f"Ray, {workers} worker{'s' * (workers > 1)}"
        executors[name] = RayExecutor(ModelSpec(), workers=workers, threads=args.threads)
        starts[name] = time.perf_counter() - t0
        evaluate(model, examples[:1], executor=executors[name], **kw)  # warm-up in the actors
    times: dict[str, list[float]] = {k: [] for k in executors}
    rows: dict[str, Any] = {}
    for _ in range(args.repeats):  # interleaved, so that the machine's load hits every executor alike
        for name, ex in executors.items():
            t0 = time.perf_counter()
            rows[name] = evaluate(model, examples, executor=ex, **kw)
            times[name].append(time.perf_counter() - t0)
    for ex in executors.values():
        if ex is not None:
            ex.close()
    ray.shutdown()
    here = rows["in process"]
    t_here = float(np.median(times["in process"]))
    results = [(name, float(np.median(times[name])), starts[name], max_diff(_rows(here), _rows(rows[name])))
               for name in executors]
    n_rows = len(here.rows)
    lines = [
        f"Evaluate run: zoo task {args.task!r}, {len(examples)} examples x {len(kw['methods'])} methods "
        f"({', '.join(kw['methods'])}) = {n_rows} rows, faithfulness + plausibility, batch {args.batch_size}; "
        f"lmxray-tiny on {cpus} CPU cores, {args.threads} torch thread(s) per process, torch {torch.__version__}, ray {ray.__version__}; "
        f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Median of {args.repeats} runs per executor, interleaved.",
        "",
        "| executor | job seconds | rows/s | vs in process | vs 1 worker | actor start-up s | max row difference |",
        "|---|---|---|---|---|---|---|",
    ]
    one = results[1][1]
    for name, secs, start, diff in results:
        lines.append(f"| {name} | {secs:.1f} | {n_rows / secs:.2f} | {t_here / secs:.2f}x | "
                     f"{'—' if name == 'in process' else f'{one / secs:.2f}x'} | "
                     f"{'—' if start is None else f'{start:.1f}'} | {diff:.1e} |")
    lines += ["", f"Ray cluster start-up (ray.init, local): {t_ray:.1f} s, not counted in the job times.",
              f"Command: `python benchmarks/jobs/run.py --n {args.n} --methods {args.methods} "
              f"--threads {args.threads} --repeats {args.repeats}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text("# Dataset jobs: Ray scaling and overhead\n\n" + text)
    return text


if __name__ == "__main__":
    main()
    sys.exit(0)
