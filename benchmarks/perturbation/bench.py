#!/usr/bin/env python3
"""Perturbation benchmark (issue 6): lmxray occlusion, shapley_sampling, kernel_shap and lime
against Captum, Inseq and interpreto on the bench model, plus prefix KV-cache reuse on vs off.

    python benchmarks/perturbation/bench.py [--only CASES] [--repeats 3] [--rounds 1]
                                            [--shapley-samples 10] [--markdown] [--json FILE]

It runs on the shared harness (``benchmarks/run.py``): every library in a fresh process of the
case's venv, 2 threads, ``--warmup`` untimed calls then ``--repeats`` timed calls, median; peers
and lmxray alternate order across rounds. lmxray runs through
``benchmarks/perturbation/lmxray_perturbation_runner.py``, which also reports the token
positions computed vs a plain batched scorer and, for Shapley methods, the efficiency gap.

Cases (standard input: 40-token prompt, forced 10-token target; bench GPT-2 6 x 512, vocab 8192):

- ``occlusion_captum``: token -> id 0, prompt tokens only, vs ``LLMAttribution(FeatureAblation)``
  (same 41 evaluations; numbers must agree).
- ``shapley_captum``: Shapley value sampling, same permutations count, id-0 baseline, prompt
  tokens, vs ``LLMAttribution(ShapleyValueSampling)`` (sampling: speed only; Captum needs ~7 s
  per permutation here, so the default is 10 permutations, 0 warm-up, 2 repeats).
- ``occlusion_inseq``: ``<unk>`` replacement vs Inseq ``occlusion`` (|delta|).
- ``lime_inseq``: LIME vs Inseq ``lime`` (speed only: different sampler and kernel).
- ``occlusion_interpreto``: id-0 replacement of every source token, 50 sequences vs interpreto
  ``Occlusion`` (51 in one batch); numbers must agree.
- ``kernelshap_interpreto``: KernelSHAP, 100 sampled coalitions (+ empty and full) vs interpreto
  ``KernelShap`` 100 perturbations (speed only: interpreto's sampler is not the Shapley kernel).
- ``prefix_occlusion`` / ``prefix_kernelshap`` / ``prefix_shapley``: lmxray with prefix reuse
  (default) vs the same call scoring every sequence in full; numbers must agree.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import run as H  # noqa: E402  (the shared harness)
from cases import Case, Entry  # noqa: E402

RUNNER = "../perturbation/lmxray_perturbation_runner.py"
H.RUNNERS["lmxray"] = RUNNER
H.RUNNERS["lmxray_no_prefix"] = RUNNER
H.RUNNERS["inseq_lime"] = "../perturbation/inseq_lime_runner.py"


def lmx(method: str, **config: Any) -> Entry:
    return Entry("lmxray", method, dict(config), role="ref")


def cases(n_shap: int) -> list[Case]:
    base0 = dict(replace="baseline", baseline=0)
    return [
        Case("occlusion_captum", "venv-captum", "occlusion, prompt tokens -> id 0 (41 evaluations)",
             [lmx("occlusion", sources="prompt", **base0),
              Entry("captum", "feature_ablation", {"baseline": 0})],
             columns="prompt",
             notes="Captum LLMAttribution(FeatureAblation), KV-cached token by token"),
        Case("shapley_captum", "venv-captum",
             f"Shapley value sampling, {n_shap} permutations, prompt tokens -> id 0",
             [lmx("shapley_sampling", n_samples=n_shap, sources="prompt", **base0),
              Entry("captum", "shapley_value_sampling", {"n_samples": n_shap, "baseline": 0})],
             columns="prompt", comparable=False, timeout_s=3600,
             notes="Captum LLMAttribution(ShapleyValueSampling); different random permutations: "
                   "speed only"),
        Case("occlusion_inseq", "venv-captum", "occlusion, token -> <unk>",
             [lmx("occlusion", replace="baseline", baseline="unk"), Entry("inseq", "occlusion")],
             ref_transform="abs", notes="Inseq returns |f(x)-f(x')|: compared with |lmxray|"),
        Case("lime_inseq", "venv-captum", "LIME (speed only)",
             [lmx("lime", n_samples=50, replace="baseline", baseline="unk"),
              Entry("inseq_lime", "lime", {"n_samples": 50})],
             comparable=False,
             notes="Inseq lime: Captum Lime per target step, its own sampler and kernel; lmxray 50 "
                   "samples shared by all 10 steps"),
        Case("occlusion_interpreto", "venv-interpreto", "occlusion, every source token -> id 0",
             [lmx("occlusion", **base0),
              Entry("interpreto", "occlusion", {"batch_size": 51, "mask_token": "<unk>"})],
             notes="interpreto Occlusion, mask token <unk> (id 0), 51 sequences in one batch"),
        Case("kernelshap_interpreto", "venv-interpreto", "KernelSHAP, 100 coalitions",
             [lmx("kernel_shap", n_samples=100, **base0),
              Entry("interpreto", "kernel_shap",
                    {"n_samples": 100, "batch_size": 100, "mask_token": "<unk>"})],
             comparable=False,
             notes="interpreto samples sizes with k(l-k) and fits unweighted (not Shapley values): "
                   "speed only; lmxray: 100 kernel samples + empty + full"),
        Case("prefix_occlusion", "venv-interpreto", "occlusion: prefix reuse vs full recomputation",
             [lmx("occlusion", **base0),
              Entry("lmxray_no_prefix", "occlusion", {**base0, "_prefix": "off"})],
             notes="same call, prefix KV cache off"),
        Case("prefix_kernelshap", "venv-interpreto", "KernelSHAP 100: prefix reuse vs full",
             [lmx("kernel_shap", n_samples=100, **base0),
              Entry("lmxray_no_prefix", "kernel_shap", {"n_samples": 100, **base0, "_prefix": "off"})],
             notes="same call, prefix KV cache off"),
        Case("prefix_shapley", "venv-interpreto", f"Shapley sampling {n_shap}: prefix reuse vs full",
             [lmx("shapley_sampling", n_samples=n_shap, **base0),
              Entry("lmxray_no_prefix", "shapley_sampling",
                    {"n_samples": n_shap, **base0, "_prefix": "off"})],
             notes="same call, prefix KV cache off"),
    ]


def positions_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | lmxray call | sequences (unique) | token positions computed | naive (full sequences) | saved |",
             "|---|---|---|---|---|---|"]
    for c in results:
        for row in c["rows"]:
            ft = (row.get("extra") or {}).get("forward_tokens")
            if not ft:
                continue
            who = "prefix off" if row["library"] == "lmxray_no_prefix" else "default"
            saved = 1 - ft["computed_tokens"] / max(1, ft["naive_tokens"])
            lines.append(
                f"| {c['case']} | {row['method']} ({who}) | {ft['rows']} ({ft['unique_rows']}) | "
                f"{ft['computed_tokens']} | {ft['naive_tokens']} | {100 * saved:.0f}% |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapley-samples", type=int, default=10)
    ap.add_argument("--shapley-repeats", type=int, default=2,
                    help="timed calls (no warm-up) for shapley_captum and lime_inseq, whose peers "
                    "take minutes per call")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--from-json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.libs = None  # the harness's library filter: keep every entry
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        H.print_table(report)
        print("\n" + "\n".join(positions_table(report["cases"])))
        if args.markdown:
            print()
            H.print_markdown(report)
        return 0
    todo = cases(args.shapley_samples)
    if args.only:
        unknown = set(args.only) - {c.name for c in todo}
        if unknown:
            sys.exit(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in todo]}")
        todo = [c for c in todo if c.name in args.only]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = H.PEERS / "runs" / f"perturbation-{stamp}"
    argv_s = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report: dict[str, Any] = {
        "command": f"python benchmarks/perturbation/bench.py {argv_s}".strip(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": H.machine_info(), "threads": args.threads, "repeats": args.repeats,
        "warmup": args.warmup, "rounds": args.rounds, "run_dir": str(run_dir),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=H.REPO,
                              capture_output=True, text=True).stdout.strip(),
    }
    print(f"perturbation benchmarks: {len(todo)} case(s); raw output in {run_dir}")
    results = []
    for ci, case in enumerate(todo):
        a = copy.copy(args)
        if case.name in ("shapley_captum", "lime_inseq"):  # the peer takes minutes per call
            a.warmup, a.repeats = 0, args.shapley_repeats
        results.append(H.run_case(ci, case, a, run_dir))
    report["cases"] = results
    loads = [v for c in results for row in c["rows"] for pair in row["loadavg"] for v in pair if v]
    report["max_load"] = max(loads, default=0.0)
    report["flops"] = None
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    H.print_table(report)
    print("\n" + "\n".join(positions_table(results)))
    for c in results:
        for row in c["rows"]:
            gap = (row.get("extra") or {}).get("efficiency_gap")
            if gap is not None:
                print(f"{c['case']}: lmxray {row['method']} efficiency gap max "
                      f"|sum phi - (f(x) - f(empty))| = {gap:.1e}")
    if args.markdown:
        print()
        H.print_markdown(report)
    bad = [row for c in results for row in c["rows"]
           if not row["ok"] or (row.get("diff") and not row["diff"].get("agree", True))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
