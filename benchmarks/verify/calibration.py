"""Calibration of the verification verdict on the zoo model (lmxray.load()).

For every registered method on the verified test examples of the zoo tasks facts, recall and
ioi: how often the faithfulness test calls the explanation faithful at alpha 0.05 (k = 49
random attributions), plus the full verdict (stability, completeness, convergence) on a subset.
The `random` method is run on more examples: its faithful rate is the test's false-positive rate
(the p-value promises at most alpha).

    PYTHONPATH=src python3 benchmarks/verify/calibration.py            # writes benchmarks/results/verify.md
    PYTHONPATH=src python3 benchmarks/verify/calibration.py --n 10     # quicker
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import lmxray
import lmxray.zoo as zoo
from lmxray.attribution import method_specs
from lmxray.attribution.verify import verify
from lmxray.evaluate.runner import DEFAULT_METHOD_PARAMS

TASKS = ("facts", "recall", "ioi")


def run(n: int, n_random: int, full: int, out: Path) -> None:
    m = lmxray.load()
    rows = []
    for task in TASKS:
        exs = [e for e in zoo.dataset(task, n=max(n, n_random)) if e.verified]
        for method in method_specs():
            subset = exs[: n_random if method == "random" else n]
            params = DEFAULT_METHOD_PARAMS.get(method, {})
            t0 = time.perf_counter()
            attrs = m.attribute([e.prompt for e in subset], [e.target for e in subset],
                                method=method, **params)
            t_attr = time.perf_counter() - t0
            pvals, faithful, verdicts = [], [], []
            t0 = time.perf_counter()
            for i, a in enumerate(attrs):
                kw = {} if i < full else {"stability": "none", "seeds": 0}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = verify(m, a, **kw)
                pvals.append(v.p_value)
                faithful.append(bool(v.faithful))
                if i < full:
                    verdicts.append(v.passed)
            rows.append({"task": task, "method": method, "n": len(attrs),
                         "faithful_rate": float(np.mean(faithful)),
                         "median_p": float(np.median([p for p in pvals if p is not None])),
                         "full_verdict_n": len(verdicts),
                         "passed_rate": float(np.mean(verdicts)) if verdicts else None,
                         "explain_s": t_attr, "verify_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, out, n, n_random, full)


def write(rows: list[dict], out: Path, n: int, n_random: int, full: int) -> None:
    rnd = [r for r in rows if r["method"] == "random"]
    fp = sum(r["faithful_rate"] * r["n"] for r in rnd) / max(1, sum(r["n"] for r in rnd))
    lines = [
        "# Verification calibration (zoo model, verified test examples)",
        "",
        f"Command: `PYTHONPATH=src python3 benchmarks/verify/calibration.py --n {n} --n-random "
        f"{n_random} --full {full}`",
        "",
        "faithful = the permutation test's p <= 0.05 (faithfulness correlation vs 999 random attributions); passed = the",
        f"whole verdict (faithful and no failing stability/completeness/convergence check), on the "
        f"first {full} examples of each cell.",
        "",
        f"**False-positive rate of `random` (called faithful), all tasks: {fp:.1%}** "
        f"(n = {sum(r['n'] for r in rnd)}; promised <= 5%)",
        "",
        "| task | method | n | faithful | median p | passed (full verdict) | explain s | verify s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        passed = "-" if r["passed_rate"] is None else f"{r['passed_rate']:.0%} of {r['full_verdict_n']}"
        lines.append(f"| {r['task']} | {r['method']} | {r['n']} | {r['faithful_rate']:.0%} | "
                     f"{r['median_p']:.3f} | {passed} | {r['explain_s']:.1f} | {r['verify_s']:.1f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="examples per task and method")
    ap.add_argument("--n-random", type=int, default=100, help="examples per task for `random`")
    ap.add_argument("--full", type=int, default=5, help="examples per cell with the full verdict")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/verify.md"))
    a = ap.parse_args(argv)
    run(a.n, a.n_random, a.full, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
