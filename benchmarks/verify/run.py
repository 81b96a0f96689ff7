"""Cost of verification: `lmxray explain --verify` against `lmxray explain`, on the default model.

Runs each method on the README prompt with the CLI defaults (5 generated tokens, the method's own
defaults), without and with verify=True, in one process (median of --repeat runs, after a warm-up),
and prints the time ratio next to the token-position ratio that Verification.cost reports, and a
check that verifying leaves the explanation's scores unchanged. The claim: the default method
(integrated gradients) stays under 3x.

    PYTHONPATH=src python3 benchmarks/verify/run.py               # all methods
    PYTHONPATH=src python3 benchmarks/verify/run.py --methods integrated_gradients --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import lmxray
from lmxray.attribution import method_specs

PROMPT = "The capital of France is"


def _time(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/verify_cost.json"))
    a = ap.parse_args(argv)
    m = lmxray.load()
    names = list(method_specs()) if a.methods == "all" else a.methods.split(",")
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'method':<22} {'explain s':>9} {'+verify s':>9} {'time x':>7} {'tokens x':>8} "
          f"{'reruns':>6}  same scores  verdict")
    for name in names:
        m.attribute(PROMPT, method=name)  # warm-up
        t_plain, plain = _time(lambda n=name: m.attribute(PROMPT, method=n), a.repeat)
        t_ver, ver = _time(lambda n=name: m.attribute(PROMPT, method=n, verify=True), a.repeat)
        same = bool(np.allclose(plain.scores, ver.scores, equal_nan=True))
        v = ver.verification
        row = {"method": name, "explain_s": t_plain, "explain_verify_s": t_ver,
               "time_ratio": t_ver / t_plain, "token_ratio": v.cost.get("token_ratio"),
               "reruns": v.cost["method_reruns"], "same_scores": same, "verdict": v.verdict}
        rows.append(row)
        tr = row["token_ratio"]
        print(f"{name:<22} {t_plain:>9.3f} {t_ver:>9.3f} {row['time_ratio']:>7.2f} "
              f"{(tr or float('nan')):>8.2f} {row['reruns']:>6}  {str(same):<11}  {v.verdict}",
              flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"prompt": PROMPT, "repeat": a.repeat, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
