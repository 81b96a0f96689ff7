"""The verdict's false-positive rate, measured at scale: how often the registered `random` method is
called faithful at alpha 0.05 on verified zoo examples (facts, recall, ioi).

Every draw is a fresh `random` attribution (the registered method, its own seed) against a fresh
null of 999 random attributions, so this measures the marginal rate the p-value promises. The
removal subsets and their output drops do not depend on either, so they are measured once per
example with the model (the costly part, exactly as `verify()` does), and each draw reuses them.
The same harness as tests/test_verify_calibration.py, on many more examples and draws.

    PYTHONPATH=src python3 benchmarks/verify/random_rate.py [--n 10] [--draws 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

import lmxray
from lmxray import zoo
from lmxray.attribution import verify as V
from lmxray.attribution.base import Context, Request, get_method
from lmxray.targets import resolve_target_fn

ALPHA = 0.05


def p_values(m, ex, draws: int) -> list[float]:
    a = m.attribute(ex.prompt, ex.target, method="random")
    ctx = Context(target_fn=resolve_target_fn("logprob"))
    plans, _ = V.subset_drops(m, a, V.check_params({}), ctx, np.random.default_rng(1))
    ids = [int(i) for i in a.source_ids]
    req = Request(ids[: a.prompt_length], ids[a.prompt_length:])
    out = []
    for d in range(draws):
        obs = get_method("random").fn(m, [req], ctx, seed=d)[0].scores
        rng = np.random.default_rng([7, d, *ids])
        corr = [V.subset_correlations(np.vstack([obs[t, c][None], V.null_scores(rng, len(c))]), mk, dr)
                for t, (c, mk, dr) in enumerate(plans)]
        mean = np.mean(np.stack(corr), axis=0)
        out.append(V.permutation_p_value(mean[0], mean[1:]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="verified examples per task")
    ap.add_argument("--draws", type=int, default=300, help="random attributions per example")
    ap.add_argument("--out", default="benchmarks/results/verify_random_rate.json")
    a = ap.parse_args()
    m = lmxray.load()
    rows = []
    for task in ("facts", "recall", "ioi"):
        exs = [e for e in zoo.dataset(task, n=a.n * 2 + 10) if e.verified][: a.n]
        ps = [p for ex in exs for p in p_values(m, ex, a.draws)]
        k = int(sum(p <= ALPHA for p in ps))
        rows.append({"task": task, "examples": len(exs), "draws": len(ps), "faithful": k})
        print(f"{task}: {k}/{len(ps)} = {k / len(ps):.2%}", file=sys.stderr, flush=True)
    k, n = sum(r["faithful"] for r in rows), sum(r["draws"] for r in rows)
    ci = binomtest(k, n, ALPHA).proportion_ci(0.95)
    print(f"\n`random` called faithful at alpha {ALPHA}: {k}/{n} = {k / n:.2%} "
          f"(95% CI {ci.low:.2%}-{ci.high:.2%}); load average {os.getloadavg()[0]:.1f}")
    for r in rows:
        print(f"  {r['task']:7s} {r['faithful']}/{r['draws']} = {r['faithful'] / r['draws']:.2%} "
              f"({r['examples']} examples)")
    Path(a.out).write_text(json.dumps({"alpha": ALPHA, "faithful": k, "draws": n,
                                       "ci95": [ci.low, ci.high], "tasks": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
