"""Benchmark: a full (layer × position) residual-stream patching sweep, lmxray vs TransformerLens.

Both sides compute the same thing on the bench GPT-2 (``shared/bench/build_bench_model.py``:
6 layers, d=512, vocab 8192): ``resid_pre`` patching of the clean run (standard prompt + target,
50 tokens) into the corrupted run (prompt tokens replaced by ``<unk>``), metric = sum of the 10
target log-probabilities, 6 × 50 = 300 patches.

- TransformerLens 4.x: ``transformer_lens.patching.get_act_patch_resid_pre`` on a
  ``TransformerBridge`` in compatibility mode without weight processing (logits equal plain HF's):
  one forward per patch (``benchmarks/runners/tlens_runner.py``).
- lmxray: ``lmxray.internals.activation_patching`` (``lmxray_patching_runner.py``): patches
  batched, the corrupted run's KV cache reused before each patched position, logits only at the
  metric positions.

Each side runs in a fresh process in ``benchmarks/.peers/venv-tlens`` (transformer-lens 4.3,
transformers 5.24, torch 2.13 CPU, lmxray editable), same thread count, 1 warm-up + ``repeats``
timed calls; rounds alternate the order. The two result matrices must agree (max |Δ| printed).

    python benchmarks/patching/bench_patching.py                 # 1 round, 3 repeats, 2 threads
    python benchmarks/patching/bench_patching.py --rounds 2 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
PY = BENCH / ".peers" / "venv-tlens" / "bin" / "python"
RUNNERS = {
    "transformer_lens": BENCH / "runners" / "tlens_runner.py",
    "lmxray": HERE / "lmxray_patching_runner.py",
}


def run_one(lib: str, out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(PY), str(RUNNERS[lib]), "--method", "resid_pre_patching", "--config", json.dumps({"corrupt_id": 0}),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--out", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with open(out / "log.txt", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=BENCH.parent, check=False)
    res = json.loads((out / "result.json").read_text())
    if not res.get("ok"):
        raise SystemExit(f"{lib} failed: {res.get('error')} (log: {out / 'log.txt'})")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write all measurements here")
    args = ap.parse_args()
    if not PY.exists():
        raise SystemExit(f"missing {PY}; run: bash benchmarks/setup_peers.sh tlens model")
    import numpy as np

    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = BENCH / ".peers" / "runs" / f"patching-{stamp}"
    times: dict[str, list[float]] = {"transformer_lens": [], "lmxray": []}
    results: dict[str, list[dict]] = {"transformer_lens": [], "lmxray": []}
    scores: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        order = ["transformer_lens", "lmxray"] if r % 2 == 0 else ["lmxray", "transformer_lens"]
        for lib in order:
            out = root / f"{lib}-{r}"
            res = run_one(lib, out, args)
            times[lib] += res["times"]
            results[lib].append(res)
            scores[lib] = np.load(out / "scores.npy")
            print(f"round {r} {lib:>16}: median {res['median']:.2f} s  (load {res['loadavg_start']:.1f})",
                  flush=True)
    diff = float(np.max(np.abs(scores["lmxray"] - scores["transformer_lens"])))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["transformer_lens"] / med["lmxray"]
    print()
    print(f"resid_pre patching sweep, {scores['lmxray'].shape[0]} layers x {scores['lmxray'].shape[1]} positions, "
          f"{args.threads} thread(s), {args.rounds} round(s) x {args.repeats} timed calls")
    print(f"  TransformerLens get_act_patch_resid_pre : {med['transformer_lens']:.2f} s")
    print(f"  lmxray activation_patching              : {med['lmxray']:.2f} s")
    print(f"  speed-up (TransformerLens / lmxray)     : {ratio:.2f}x")
    print(f"  agreement: max |lmxray - TransformerLens| = {diff:.2e} (metric units; clean "
          f"{results['lmxray'][-1]['metric_clean']:.4f}, corrupted {results['lmxray'][-1]['metric_corrupted']:.4f})")
    if args.json is not None:
        args.json.write_text(json.dumps({"times": times, "median": med, "ratio": ratio, "max_abs_diff": diff,
                                         "threads": args.threads, "results": results, "runs": str(root)},
                                        indent=1, default=str))
    sys.exit(0 if diff < 1e-3 else 1)


if __name__ == "__main__":
    main()
