"""Occlusion over long prompts: lmxray (prefix reuse from the KV cache) against Captum's
FeatureAblation on the issue's model (the shared bench GPT-2 6 x 512, its position table extended
to 2048 for the longest prompts, see ``common.issue_model``), the same prompt, 3 forced target
tokens and baseline (token id 0), with a numeric agreement check, the token positions computed,
and the time per doubling of the prompt.

    nice -n 5 python benchmarks/longcontext/occlusion.py --lengths 256 512 1024 2048 --captum 1024 --sample 64
    nice -n 5 python benchmarks/longcontext/occlusion.py --lengths 256 --sample 0   # every position
    nice -n 5 python benchmarks/longcontext/occlusion.py --small ...   # GPT-2 2 x 128 (busy CPUs)
    python benchmarks/longcontext/occlusion.py --table-only   # the table of the stored rows

``--sample P`` occludes P prompt positions (4 contiguous blocks spread evenly over the prompt)
instead of every one, for both tools on the same positions: on a shared 2-core CPU a full sweep at
2048 tokens would take hours. Each occluded position is one perturbed sequence, so the full
sweep's time is estimated as the sample's time x positions / P (for lmxray an over-estimate: its
one unperturbed pass is counted n / P times; for Captum ``(n + 1) / (P + 2)``: its unperturbed
pass plus one forward for the unsampled positions lumped into one feature). ``--sample 0`` runs
every position (measured, not estimated). Rows are kept in ``longcontext-occlusion.json`` by
(model, length, sample), so lengths can be measured in separate invocations; a Captum comparison
is always measured in the same invocation as the lmxray run it is compared with (interleaved).

Captum is given the generous form: one forward per perturbation that scores all target tokens
teacher forced (its LLMAttribution runs one forward per target token), timed at each
``--captum-batch`` (perturbations per evaluation; default 1 and 16) and compared at the fastest:
on this CPU one perturbation per evaluation is the faster (the unfused GELU's passes over
``[batch, positions, d_ff]`` cost more on big batches). ``--unfused`` also times lmxray with
the model's own ``gelu_new`` instead of the fused kernel it scores with
(:meth:`lmxray.Model.fused_activations`), to show what each part of the speed-up is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_model, issue_model, load_average, prompt_of, write_section  # noqa: E402

from lmxray.attribution._prefix import count_forward_tokens  # noqa: E402
from lmxray.attribution.api import build_requests  # noqa: E402
from lmxray.attribution.base import Context  # noqa: E402
from lmxray.attribution.perturbation import occlude  # noqa: E402
from lmxray.targets import resolve_target_fn  # noqa: E402

TARGET = " the copyright notice"
RES = Path(__file__).resolve().parents[1] / "results"
OUT = RES / "longcontext-occlusion.md"
STORE = RES / "longcontext-occlusion.json"


def sample_positions(n_prompt: int, p: int, blocks: int = 4) -> list[int]:
    """``p`` positions in ``blocks`` contiguous runs centred at (k + 1/2) / blocks of the prompt
    (all positions when ``p`` is 0 or covers the prompt)."""
    if p <= 0 or p >= n_prompt:
        return list(range(n_prompt))
    per = p // blocks
    out: list[int] = []
    for k in range(blocks):
        start = int((k + 0.5) * n_prompt / blocks) - per // 2
        out.extend(range(max(0, start), min(n_prompt, start + per)))
    return sorted(set(out))


def lmxray_run(m, prompt, sample, positions=None):
    """Occlusion (baseline id 0, prompt sources) at the sampled positions, through the engine
    that ``m.attribute(method="occlusion", replace="baseline", baseline=0, sources="prompt")``
    runs; returns (summed drop per position, positions, seconds, stats, prompt length)."""
    with count_forward_tokens() as st:
        t0 = time.perf_counter()
        req = build_requests(m, [prompt], [TARGET], None, None)[0]
        pos = sample_positions(req.n_prompt, sample) if positions is None else positions
        ctx = Context(target_fn=resolve_target_fn("logprob"))
        _, drop = occlude(m, [req], ctx, [pos], "baseline", 0)[0]
        sec = time.perf_counter() - t0
    assert req.n_target == 3, req.n_target
    return np.nansum(drop, axis=1), pos, sec, st, req.n_prompt


def captum_run(m, prompt, pos, batch):
    """Captum FeatureAblation at the positions ``pos`` (the others lumped into one feature)."""
    from captum.attr import FeatureAblation

    ids = m.encode(prompt)
    tgt = m.encode_target(TARGET)
    n_p = len(ids)

    def total_logprob(x):
        t = torch.tensor(tgt[:-1]).expand(x.shape[0], -1)
        logits = m.hf(input_ids=torch.cat([x, t], 1)).logits[:, n_p - 1:].float()
        lp = torch.log_softmax(logits, -1)
        return lp[:, torch.arange(len(tgt)), torch.tensor(tgt)].sum(-1)

    mask = torch.full((1, n_p), len(pos), dtype=torch.long)
    mask[0, pos] = torch.arange(len(pos))
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        attr = FeatureAblation(total_logprob).attribute(
            x, baselines=0, feature_mask=mask, perturbations_per_eval=batch
        )
    return attr[0, pos].numpy(), time.perf_counter() - t0


def _unfused(m):
    """``m`` scoring without the fused tanh-GELU (the model's own ``gelu_new``), to show how
    much of the speed-up is prefix reuse and how much the fused kernel."""
    m.fused_activations = contextlib.nullcontext
    return m


def interleaved(m, prompt, args):
    """lmxray, lmxray without the fused GELU (``--unfused``) and Captum at each
    ``--captum-batch`` block by block over the sampled positions (the 4 contiguous blocks),
    the order rotating, so that a change of load hits every run alike; times summed per run."""
    n_prompt = len(m.encode(prompt))
    pos = sample_positions(n_prompt, args.sample)
    blocks = np.array_split(np.asarray(pos), 4)
    runs = ["lmxray", *(["unfused"] if args.unfused else []), *(f"captum{b}" for b in args.captum_batch)]
    out: dict[str, list] = {r: [] for r in runs}
    sec = dict.fromkeys(runs, 0.0)
    stats = []
    for k, blk in enumerate(blocks):
        for who in runs[k % len(runs):] + runs[:k % len(runs)]:
            if who in ("lmxray", "unfused"):
                mm = _unfused(copy.copy(m)) if who == "unfused" else m
                d, _, t, st, _ = lmxray_run(mm, prompt, args.sample, blk.tolist())
                stats += [st] if who == "lmxray" else []
            else:
                d, t = captum_run(m, prompt, blk.tolist(), int(who[6:]))
            out[who].append(d)
            sec[who] += t
    st = stats[0]
    for other in stats[1:]:
        st._add(**other.as_dict())
    return {r: np.concatenate(v) for r, v in out.items()}, pos, sec, st, n_prompt


def measure(m, name, n, args):
    prompt = prompt_of(m, n)
    if n in args.captum and args.interleave:
        vals, pos, secs, st, n_prompt = interleaved(m, prompt, args)
        drop, sec = vals["lmxray"], secs["lmxray"]
    else:
        drop, pos, sec, st, n_prompt = lmxray_run(m, prompt, args.sample)
        vals, secs = {"lmxray": drop}, {"lmxray": sec}
        for b in args.captum_batch if n in args.captum else ():
            vals[f"captum{b}"], secs[f"captum{b}"] = captum_run(m, prompt, pos, b)
    full = len(pos) == n_prompt
    row = {"model": name, "n": n, "n_prompt": n_prompt, "sample": 0 if full else len(pos),
           "sec": sec, "est_full": sec * n_prompt / len(pos), "computed": st.computed_tokens,
           "naive": st.naive_tokens, "forwards": st.forwards, "load": load_average(),
           "threads": args.threads, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "unfused" in secs:
        row["sec_unfused"] = secs["unfused"]
        row["max_diff_unfused"] = float(np.abs(drop - vals["unfused"]).max())
    cap = {k: v for k, v in secs.items() if k.startswith("captum")}
    if cap:
        best = min(cap, key=cap.get)
        csec = cap[best]
        row["interleaved"] = bool(args.interleave)
        row["captum_by_batch"] = {k[6:]: round(v, 2) for k, v in cap.items()}
        row["captum_batch"] = int(best[6:])
        row["captum_sec"] = csec
        row["captum_est_full"] = csec if full else csec * (n_prompt + 1) / (len(pos) + 2)
        row["max_diff"] = max(float(np.abs(drop - vals[k]).max()) for k in cap)
        row["load_after_captum"] = load_average()
    print(json.dumps(row), flush=True)
    return row


def sweep_flops(n: int, d: int = 512) -> float:
    """A leave-one-out sweep's work per layer: n sequences of n positions, each position's linear
    layers (24 d^2) plus causal attention over n / 2 positions on average (4 d per position):
    the work grows 4x per doubling in positions, a little more in FLOPs as attention's share
    (n / (12 d)) grows."""
    return float(n) * n * (24 * d * d + 2 * d * n)


def table(rows, name):
    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    lines = [
        f"### Occlusion over long prompts ({name}; target {TARGET!r} = 3 forced tokens, baseline "
        "id 0, prompt sources)", "",
        "Model: the shared bench model (/work/shared/bench/build_bench_model.py: GPT-2 6 x 512, "
        "seed 0, n_positions 1024) with its position table extended to 2048 (rows 0..1023 the "
        "bench model's, rows 1024..2047 new, normal std 0.02 seed 1): a 1024-token prompt and "
        "the forced targets need 1026 positions. Sequences of up to 1024 positions get "
        "the bench model's exact numbers. `sample` = occluded positions measured (0: all); "
        "`est. full` = seconds for every position (measured when sample is 0, else sample "
        "seconds x positions / sample; see the script's docstring).", "",
        "| run (UTC) | prompt tokens | sample | lmxray s | lmxray est. full s | x per doubling (est. full) | "
        "naive work x (positions / FLOPs) | computed / naive tokens | forwards | Captum s | Captum est. full s | "
        "speed-up | lmxray s unfused GELU (speed-up) | max abs diff | load avg (1/5/15 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    prev = None
    for r in rows:
        cap = r.get("captum_sec")
        batch = "" if "captum_by_batch" not in r else " (" + ", ".join(
            f"batch {b}: {t:.1f}" for b, t in r["captum_by_batch"].items()) + ")"
        unf = "" if "sec_unfused" not in r else (
            f"{r['sec_unfused']:.1f} ({cap / r['sec_unfused']:.2f}x)" if cap else f"{r['sec_unfused']:.1f}")
        same = prev is not None and prev.get("run") == r.get("run") and prev["sample"] == r["sample"]
        growth = r["est_full"] / prev["est_full"] if same and prev["n"] * 2 == r["n"] else None
        work = sweep_flops(r["n_prompt"]) / sweep_flops(prev["n_prompt"]) if growth else None
        lines.append(
            f"| {r.get('run', r['when'])} | {r['n']} | {r['sample'] or 'all'} | {r['sec']:.1f} | {r['est_full']:.0f} | "
            f"{fmt(growth, '.2f')} | {'' if work is None else f'4.00 / {work:.2f}'} | "
            f"{r['computed']:,} / {r['naive']:,} ({r['computed'] / r['naive']:.2f}) | "
            f"{r['forwards']} | {fmt(cap, '.1f')}{batch} | {fmt(r.get('captum_est_full'), '.0f')} | "
            f"{'' if cap is None else format(cap / r['sec'], '.2f') + 'x'} | {unf} | "
            f"{fmt(r.get('max_diff'), '.1e')} | {r['load']} |"
        )
        prev = r
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--captum", type=int, nargs="*", default=[1024])
    ap.add_argument("--captum-batch", type=int, nargs="+", default=[1, 16],
                    help="Captum's perturbations_per_eval; each is timed, the fastest compared")
    ap.add_argument("--unfused", action="store_true",
                    help="also time lmxray with the model's own gelu_new (no fused kernel)")
    ap.add_argument("--sample", type=int, default=64, help="occluded positions per length (0: all)")
    ap.add_argument("--small", action="store_true", help="GPT-2 2 x 128 instead of the bench model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interleave", action="store_true",
                    help="compare with Captum block by block, alternating (see interleaved())")
    ap.add_argument("--table-only", action="store_true", help="print the stored rows' table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.table_only:
        name = "GPT-2 2x128 (small)" if args.small else "GPT-2 6x512 (bench model)"
        write_section(OUT, table(stored(json.loads(STORE.read_text()), name), name) + [""])
        return
    if args.small:
        m = bench_model(n_positions=max(args.lengths) + 16, n_layer=2, n_embd=128, n_head=4)
        name = "GPT-2 2x128 (small)"
    else:
        m = issue_model(n_positions=max(2048, max(args.lengths) + 16))
        name = "GPT-2 6x512 (bench model)"
    lmxray_run(m, prompt_of(m, 32), 0)  # warm-up (and the one-time check of the cached path)
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    run = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for n in args.lengths:
        row = {**measure(m, name, n, args), "run": run}
        store[f"{name}|{n}|{row['sample']}|{run}"] = row
        STORE.write_text(json.dumps(store, indent=1) + "\n")
    write_section(OUT, table(stored(store, name), name) + [""])


def stored(store, name):
    return sorted((r for r in store.values() if r["model"] == name),
                  key=lambda r: (r.get("run", r["when"]), r["sample"] == 0, r["n"]))


if __name__ == "__main__":
    main()
