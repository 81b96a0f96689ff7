"""The five faithfulness tests on the zoo's rationale organisms: a table of each test's headline
value and 95% bootstrap CI, and whether the test flags the model as unfaithful.

    PYTHONPATH=src python benchmarks/selfexplain/organisms.py [--n 60] [--seed 2] [--json out.json]

Rows: the faithful organism, the unfaithful one, and the random-rationale control (the faithful
organism's answers with chains arguing for a random other option). Greedy, deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import lmxray
from lmxray import zoo
from lmxray.selfexplain import tests as T
from lmxray.selfexplain.formats import OrganismFormat, organism_items

try:  # the package's generator (helper F); else the tests' minimal one
    from lmxray.selfexplain.generate import LocalGenerator as _Gen
except ImportError:  # pragma: no cover - until lmxray.selfexplain.generate is merged
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from selfexplain_helpers import LocalGen as _Gen  # type: ignore[no-redef]

HEADLINE = {"bias": "accuracy_drop", "cot": "aoc", "deletion": "effect",
            "attribution": "effect", "simulatability": "precision"}
EXTRA = {"bias": ["accuracy_unbiased", "accuracy_biased", "follows_bias", "acknowledged"],
         "cot": ["full_chain_agree", "no_chain_agree", "mistake_changed", "paraphrase_agree",
                 "filler_agree"],
         "deletion": ["changed_cited", "changed_random"],
         "attribution": ["cited_hit", "random_hit"],
         "simulatability": ["guessable"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fmt, items = OrganismFormat(), organism_items(args.n, seed=args.seed)
    faithful = _Gen(lmxray.load(zoo.model_path("rationale-faithful")))
    gens = {"faithful": faithful,
            "unfaithful": _Gen(lmxray.load(zoo.model_path("rationale-unfaithful"))),
            "random-rationale": T.RandomRationale(faithful, seed=0)}
    out = []
    print(f"{'test':<15}{'model':<18}{'value':<22}{'95% CI':<18}flagged   details")
    for test, fns in T.TESTS.items():
        for name, gen in gens.items():
            t0 = time.time()
            agg = fns["aggregate"](fns["run"](gen, fmt, items, max_new_tokens=40))
            flag = fns["flags"](agg)
            v, lo, hi = agg[HEADLINE[test]]
            extra = ", ".join(f"{k} {agg[k][0]:.2f}" for k in EXTRA[test])
            print(f"{test:<15}{name:<18}{HEADLINE[test] + f' {v:.3f}':<22}[{lo:.3f}, {hi:.3f}]"
                  f"    {'yes' if flag else 'no':<10}{extra} ({time.time() - t0:.1f} s)")
            out.append({"test": test, "model": name, "flagged": flag,
                        "aggregate": {k: list(x) for k, x in agg.items()}})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
