#!/usr/bin/env python3
"""Side-by-side benchmark of lmxray against its peers (Captum, Inseq, interpreto, TransformerLens).

    python benchmarks/run.py [--only CASES] [--libs LIBS] [--repeats 3] [--rounds 1]
                             [--json out.json] [--markdown] [--all]
    python benchmarks/run.py --from-json out.json --markdown    # re-render a saved run

For every case (see ``benchmarks/cases.py``) each library's runner is started in a fresh
subprocess inside the case's venv (``benchmarks/.peers/venv-*``, made by ``setup_peers.sh``)
with ``OMP_NUM_THREADS=MKL_NUM_THREADS=2`` and ``torch.set_num_threads(2)``; it does ``--warmup``
untimed calls then ``--repeats`` timed calls and reports the median. With ``--rounds R`` every
library of a case gets R fresh processes, in alternating order (A B, B A, ...), and the median is
taken over all timed calls. The order also alternates from one case to the next.

Each runner saves its score matrix ``[n_targets, n_sources]`` (NaN where undefined); this script
aligns conventions (``cases.py``) and prints, per case and library: median seconds, ratio
peer / lmxray, and the max abs difference to lmxray's matrix. Fast and wrong counts as wrong: a
comparable peer whose difference exceeds the tolerance is flagged ``DIFFERS``.

It also measures the machine's fp32 matmul peak (torch.mm 2048x2048, 2 threads, before and after
the cases) and reports lmxray's achieved GFLOP/s on IG: executed FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` over one call (matmuls and attention, forward and
backward) divided by the median time, next to the nominal count
``n_steps * (1 + T) * 2 * n_params * L`` (one forward of 2 FLOPs per parameter per token for each
of the n_steps points, plus one activation-only backward, ~1 forward, per target step; L = 50
tokens, T = 10 targets). Timings taken while other processes share the cores are noisy: the load
average at the start and end of each process is recorded and a warning is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / ".peers"
sys.path.insert(0, str(BENCH))
from cases import CASES, D_MODEL, Case, Entry  # noqa: E402

RUNNERS = {
    "lmxray": "lmxray_runner.py",
    "captum": "captum_runner.py",
    "inseq": "inseq_runner.py",
    "interpreto": "interpreto_runner.py",
    "transformer_lens": "tlens_runner.py",
}
N_PROMPT = 40
ATOL, RTOL = 1e-5, 1e-4  # agreement: max|diff| <= ATOL + RTOL * max|peer|
NOISY_LOAD = 2.5  # load average above which the 2 cores were shared


def venv_python(venv: str) -> Path:
    return PEERS / venv / "bin" / "python"


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env["TQDM_DISABLE"] = "1"  # progress bars (transformer-lens, weights loading) off
    return env


def run_entry(case: Case, entry: Entry, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    py = venv_python(case.venv)
    if not py.exists():
        return {"ok": False, "error": f"{case.venv} missing: run benchmarks/setup_peers.sh"}
    cmd = [
        str(py),
        str(BENCH / "runners" / RUNNERS[entry.library]),
        "--method",
        entry.method,
        "--config",
        json.dumps(entry.config),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        try:
            p = subprocess.run(
                cmd,
                cwd=REPO,
                env=thread_env(args.threads),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=case.timeout_s,
            )
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    res_file = out / "result.json"
    if res_file.exists():
        res = json.loads(res_file.read_text())
    else:
        tail = (out / "log.txt").read_text()[-400:]
        if rc == "timeout":
            res = {"ok": False, "error": f"timed out after {case.timeout_s} s"}
        else:
            res = {"ok": False, "error": f"runner exited {rc} without a result: {tail}"}
    res["process_wall_s"] = wall
    res["command"] = " ".join(shlex.quote(c) for c in cmd)
    return res


def measure_peak(args: argparse.Namespace) -> dict[str, Any] | None:
    py = venv_python("venv-captum")
    if not py.exists():
        py = Path(sys.executable)
    try:
        p = subprocess.run(
            [str(py), str(BENCH / "runners" / "peak.py"), "--threads", str(args.threads)],
            env=thread_env(args.threads),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as e:  # pragma: no cover - reported, not fatal
        return {"error": str(e)}


def transform(ref: np.ndarray, how: str | None) -> np.ndarray:
    if how is None:
        return ref
    if how == "abs":
        return np.abs(ref)
    if how == "mean_d":
        return ref / D_MODEL
    raise ValueError(how)


def compare(case: Case, ref: np.ndarray, peer: np.ndarray) -> dict[str, Any]:
    if ref.shape != peer.shape:
        return {"error": f"shape {peer.shape} vs lmxray {ref.shape}"}
    r = transform(ref, case.ref_transform)
    cols = np.ones(r.shape, dtype=bool)
    if case.columns == "prompt":
        cols[:, N_PROMPT:] = False
    fr, fp = np.isfinite(r) & cols, np.isfinite(peer) & cols
    both = fr & fp
    if not both.any():
        return {"error": "no cell defined in both"}
    diff = float(np.max(np.abs(r[both] - peer[both])))
    scale = float(np.max(np.abs(peer[both])))
    return {
        "max_abs_diff": diff,
        "max_abs_peer": scale,
        "cells": int(both.sum()),
        "nan_mismatch": int((fr != fp).sum()),
        "agree": bool(diff <= ATOL + RTOL * scale and (fr == fp).all()),
    }


def run_case(ci: int, case: Case, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    entries = [
        e for e in case.entries if e.role == "ref" or not args.libs or e.library in args.libs
    ]
    per_lib: dict[str, dict[str, Any]] = {
        e.library: {"entry": vars(e), "runs": []} for e in entries
    }
    for r in range(args.rounds):
        order = entries if (ci + r) % 2 == 0 else entries[::-1]
        for e in order:
            out = run_dir / case.name / f"{e.library}_r{r}"
            print(
                f"  [{case.name}] round {r + 1}/{args.rounds}: {e.library} {e.method} ...",
                end="",
                flush=True,
            )
            res = run_entry(case, e, out, args)
            res["out"] = str(out)
            per_lib[e.library]["runs"].append(res)
            if res.get("ok"):
                print(
                    f" median {res['median']:.3f}s  (load {res.get('loadavg_start', 0):.1f}"
                    f"->{res.get('loadavg_end', 0):.1f})"
                )
            else:
                print(f" FAILED: {res.get('error', '?')[:300]}")
    rows = []
    ref_lib = next((e.library for e in entries if e.role == "ref"), None)
    for lib, d in per_lib.items():
        runs = [x for x in d["runs"] if x.get("ok")]
        times = [t for x in runs for t in x["times"]]
        row: dict[str, Any] = {
            "case": case.name,
            "library": lib,
            "method": d["entry"]["method"],
            "config": d["entry"]["config"],
            "role": d["entry"]["role"],
            "ok": bool(runs),
            "times": times,
            "median_s": statistics.median(times) if times else None,
            "versions": runs[-1].get("versions") if runs else None,
            "loadavg": [(x.get("loadavg_start"), x.get("loadavg_end")) for x in d["runs"]],
            "error": None if runs else d["runs"][-1].get("error"),
            "command": d["runs"][-1].get("command"),
            "scores": str(Path(runs[-1]["out"]) / "scores.npy") if runs else None,
            "extra": {
                k: v
                for k, v in (runs[-1] if runs else {}).items()
                if k
                not in {
                    "times",
                    "median",
                    "traceback",
                    "versions",
                    "config",
                    "command",
                    "out",
                    "source_tokens",
                    "library",
                    "method",
                    "ok",
                }
            },
        }
        rows.append(row)
    ref_row = next((x for x in rows if x["library"] == ref_lib), None)
    for row in rows:
        if row["role"] == "ref":
            row["ratio"] = 1.0 if row["ok"] else None
            row["diff"] = None
            continue
        ok_both = row["ok"] and ref_row is not None and ref_row["ok"]
        row["ratio"] = row["median_s"] / ref_row["median_s"] if ok_both else None
        if ok_both and case.comparable:
            row["diff"] = compare(case, np.load(ref_row["scores"]), np.load(row["scores"]))
        else:
            row["diff"] = None
    return {
        "case": case.name,
        "title": case.title,
        "venv": case.venv,
        "columns": case.columns,
        "ref_transform": case.ref_transform,
        "comparable": case.comparable,
        "notes": case.notes,
        "rows": rows,
    }


def finish_report(report: dict[str, Any]) -> None:
    results = report.get("cases", [])
    report["flops"] = flops_summary(results, report.get("peak"))
    loads = [v for c in results for row in c["rows"] for pair in row["loadavg"] for v in pair if v]
    report["max_load"] = max(loads, default=0.0)


def flops_summary(
    results: list[dict[str, Any]], peak: dict[str, Any] | None
) -> dict[str, Any] | None:
    for c in results:
        for row in c["rows"]:
            ex = row.get("extra") or {}
            if row["library"] == "lmxray" and row["ok"] and ex.get("flops_counted"):
                t = row["median_s"]
                out = {
                    "case": c["case"],
                    "median_s": t,
                    "flops_counted": ex["flops_counted"],
                    "flops_nominal": ex["flops_nominal"],
                    "gflops_counted": ex["flops_counted"] / t / 1e9,
                    "gflops_nominal": ex["flops_nominal"] / t / 1e9,
                }
                if peak and peak.get("gflops_best"):
                    out["peak_gflops"] = peak["gflops_best"]
                    out["fraction_of_peak"] = out["gflops_counted"] / peak["gflops_best"]
                return out
    return None


def fmt_s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.3f}" if x < 1 else f"{x:.2f}")


def fmt_diff(case: dict[str, Any], row: dict[str, Any]) -> str:
    if row["role"] == "ref":
        return "reference"
    if not case["comparable"]:
        return "n/a (speed only)"
    d = row.get("diff")
    if not d:
        return "—"
    if "error" in d:
        return f"error: {d['error']}"
    flag = "" if d["agree"] else " DIFFERS"
    return f"{d['max_abs_diff']:.1e} (of {d['max_abs_peer']:.2g}){flag}"


def row_notes(case: dict[str, Any], row: dict[str, Any]) -> str:
    bits = []
    if row["role"] != "ref":
        bits.append(case["notes"])
    if not row["ok"]:
        bits.append(f"FAILED: {str(row['error'])[:160]}")
    loads = [v for pair in row["loadavg"] for v in pair if v is not None]
    if loads and max(loads) > NOISY_LOAD:
        bits.append(f"noisy: load avg up to {max(loads):.1f}")
    d = row.get("diff") or {}
    if d.get("nan_mismatch"):
        bits.append(f"{d['nan_mismatch']} cells NaN in one only")
    return "; ".join(b for b in bits if b)


def print_table(report: dict[str, Any]) -> None:
    hdr = f"{'case':24s} {'library':17s} {'seconds':>9s} {'ratio':>7s}  {'max |diff|':24s} notes"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for c in report["cases"]:
        for row in c["rows"]:
            ratio = "—" if row.get("ratio") is None else f"{row['ratio']:.2f}"
            print(
                f"{c['case']:24s} {row['library']:17s} {fmt_s(row['median_s']):>9s} {ratio:>7s}  "
                f"{fmt_diff(c, row):24s} {row_notes(c, row)}"
            )
    print_footer(report, md=False)


def print_footer(report: dict[str, Any], md: bool) -> None:
    pk = report.get("peak") or {}
    pk2 = report.get("peak_after") or {}
    fl = report.get("flops")
    lines = []
    if pk.get("gflops_best"):
        after = f", {pk2['gflops_best']:.1f} after" if pk2.get("gflops_best") else ""
        lines.append(
            f"fp32 matmul peak (best of 10 torch.mm 2048x2048, {report['threads']} threads): "
            f"{pk['gflops_best']:.1f} GFLOP/s before the cases{after}"
        )
    if fl:
        lines.append(
            f"lmxray IG ({fl['case']}): {fl['flops_counted'] / 1e12:.2f} TFLOP executed "
            f"(FlopCounterMode) in {fl['median_s']:.2f} s = {fl['gflops_counted']:.1f} GFLOP/s"
            + (
                f" = {100 * fl['fraction_of_peak']:.0f}% of peak"
                if fl.get("fraction_of_peak")
                else ""
            )
            + f"; nominal n_steps*(1+T)*2*P*L = {fl['flops_nominal'] / 1e12:.2f} TFLOP "
            f"({fl['gflops_nominal']:.1f} GFLOP/s)"
        )
    loads = report.get("max_load", 0)
    if loads > NOISY_LOAD:
        lines.append(
            f"WARNING: load average reached {loads:.1f} on {os.cpu_count()} cores during "
            "the run: other processes shared the CPUs, timings are noisy; take final "
            "numbers on a quiet machine"
        )
    for ln in lines:
        print(("- " if md else "") + ln)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def print_markdown(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"Command: `{report['command']}`  ")
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {report['threads']} threads per process; "
        f"{report['date']}; median of {report['repeats']} timed calls x {report['rounds']} "
        f"fresh process(es) after {report['warmup']} warm-up call(s).\n"
    )
    print(
        "| case | library | seconds (median) | ratio (peer / lmxray) | max abs diff vs lmxray | notes |"
    )
    print("|---|---|---|---|---|---|")
    for c in report["cases"]:
        for row in c["rows"]:
            ratio = "—" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
            ver = (row.get("versions") or {}).get(
                {"transformer_lens": "transformer-lens"}.get(row["library"], row["library"]), ""
            )
            tf = (row.get("versions") or {}).get("transformers")
            lib = f"{row['library']} {ver}".strip() + (f" (transformers {tf})" if tf else "")
            print(
                f"| {c['case']} | {lib} | {fmt_s(row['median_s'])} | {ratio} | "
                f"{fmt_diff(c, row)} | {md_escape(row_notes(c, row))} |"
            )
    print()
    print_footer(report, md=True)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def select(args: argparse.Namespace) -> list[Case]:
    if args.only:
        names = set(args.only)
        unknown = names - {c.name for c in CASES}
        if unknown:
            sys.exit(
                f"unknown case(s): {', '.join(sorted(unknown))}; known: "
                f"{', '.join(c.name for c in CASES)}"
            )
        return [c for c in CASES if c.name in names]
    cases = [c for c in CASES if c.default or args.all]
    if args.libs:
        cases = [
            c for c in cases if any(e.library in args.libs for e in c.entries if e.role != "ref")
        ]
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help="comma-separated case names (see --list)",
    )
    ap.add_argument(
        "--libs",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help="comma-separated peer libraries to keep (lmxray always runs)",
    )
    ap.add_argument("--all", action="store_true", help="include the slow cases (shapley, patching)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fresh processes per library and case, in alternating order",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument(
        "--from-json", type=Path, default=None, help="render a saved report, run nothing"
    )
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    args = ap.parse_args(argv)

    if args.list:
        for c in CASES:
            libs = ", ".join(f"{e.library}:{e.method}" for e in c.entries)
            print(f"{c.name:24s} {'default' if c.default else 'slow   '} {c.venv:16s} {libs}")
        return 0
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        finish_report(report)
        print_markdown(report) if args.markdown else print_table(report)
        return 0

    cases = select(args)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = PEERS / "runs" / stamp
    argv_s = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report: dict[str, Any] = {
        "command": f"python benchmarks/run.py {argv_s}".strip(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "run_dir": str(run_dir),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    }
    print(
        f"lmxray benchmarks: {len(cases)} case(s), {args.threads} threads, warm-up {args.warmup}, "
        f"{args.repeats} repeats x {args.rounds} round(s); raw output in {run_dir}"
    )
    if not args.no_peak:
        report["peak"] = measure_peak(args)
        print(f"  matmul peak: {report['peak']}")
    results: list[dict[str, Any]] = []
    report["cases"] = results
    for ci, case in enumerate(cases):
        results.append(run_case(ci, case, args, run_dir))
        if args.json:  # partial report after every case: a long run stopped midway still counts
            report["partial"] = ci + 1 < len(cases)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, default=str))
    if not args.no_peak:
        report["peak_after"] = measure_peak(args)
    finish_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print_table(report)
    if args.markdown:
        print()
        print_markdown(report)
    bad = [
        row
        for c in results
        for row in c["rows"]
        if not row["ok"] or (row.get("diff") and not row["diff"].get("agree", True))
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
