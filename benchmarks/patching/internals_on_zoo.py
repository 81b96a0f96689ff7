"""The internals "must show" figures on the zoo model (``lmxray.load()``: lmxray-tiny).

Prints, each with its setup:

1. causal tracing over the ``facts`` task: AIE of restoring ``resid_post`` / ``mlp.out`` /
   ``attn.out`` per layer in ROME's token buckets (the model's known facts only);
2. induction heads: induction scores on repeated random tokens, and the ``induction`` and
   ``recall`` tasks with the top-k induction heads mean-ablated vs k random heads (10 draws);
3. attribution patching vs exact activation patching on ``ioi`` pairs (S2 name swapped): Pearson
   r per site kind;
4. a probe for the answer's continent on ``facts`` capital prompts at the last subject token,
   with a control task keyed on the country (Hewitt & Liang selectivity);
5. tuned lens vs logit lens: held-out KL(final ‖ lens) per layer.

    python benchmarks/patching/internals_on_zoo.py              # everything
    python benchmarks/patching/internals_on_zoo.py --only trace,heads --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch


def facts(n: int | None = 100, relation: str | None = None) -> list[dict[str, Any]]:
    """The zoo's facts as records (what ``lmxray trace --zoo-facts`` and ``lmxray probe`` use)."""
    from lmxray import zoo
    from lmxray.internals import fact_records

    return fact_records(zoo.generate("facts", "test", None if relation else n, 0), n=n, relation=relation)


def zoo_examples(task: str, split: str = "test", n: int | None = 100) -> list[Any]:
    from lmxray import zoo

    return list(zoo.generate(task, split, n, 0))


def texts(n: int, split: str) -> list[str]:
    from lmxray import zoo

    return list(zoo.corpus(split, n=n, seed=0))


def trace(m: Any, n: int, only_known: bool = True, kinds: tuple[str, ...] = ("resid_post",),
          window: int = 10) -> dict[str, Any]:
    from lmxray.internals import trace_facts

    items = facts(n=n)
    s = trace_facts(m, items, progress=False, only_known=only_known, kinds=kinds, window=window)
    for kind in s.aie:
        print(s.table(kind))
        print()
    peak = {k: [int(i) for i in np.unravel_index(np.nanargmax(v), v.shape)] for k, v in s.aie.items()}
    return {"n": s.n, "n_skipped": s.n_skipped, "p_clean": s.p_clean, "p_corrupt": s.p_corrupt,
            "aie": {k: v.tolist() for k, v in s.aie.items()}, "peak_layer_bucket": peak, "buckets": s.buckets}


def _prompts(m: Any, task: str, n: int) -> tuple[list[str], list[str]]:

    limit = m.max_length or 10**9
    ex = [e for e in zoo_examples(task, "test", n) if len(m.encode(e.prompt + e.target)) <= limit]
    return [e.prompt for e in ex], [e.target for e in ex]


def heads(m: Any, n: int, k: int) -> dict[str, Any]:
    from lmxray.internals import ablate_heads, head_means, head_scores, random_heads_control

    rnd = head_scores(m, n_seqs=32, seq_len=20)
    print("induction scores on repeated random tokens, top heads:",
          ", ".join(f"L{ly}H{h} {v:.3f}" for (ly, h), v in rnd.top("induction", k)))
    ind_prompts, ind_targets = _prompts(m, "induction", n)
    r = head_scores(m, [p + t for p, t in zip(ind_prompts, ind_targets, strict=True)])
    top = r.top("induction", k)
    print(f"induction scores on the induction task ({len(ind_prompts)} sequences), all heads (layer x head):")
    for ly, row in enumerate(r.scores["induction"]):
        print(f"  L{ly}: " + " ".join(f"{v:.3f}" for v in row))
    print("previous-token scores on the induction task:")
    for ly, row in enumerate(r.scores["previous_token"]):
        print(f"  L{ly}: " + " ".join(f"{v:.3f}" for v in row))
    print("top induction heads:", ", ".join(f"L{ly}H{h} {v:.3f}" for (ly, h), v in top))
    out: dict[str, Any] = {"top_induction": [[ly, h, v] for (ly, h), v in top],
                           "scores": {kk: v.tolist() for kk, v in r.scores.items()},
                           "scores_random_tokens": {kk: v.tolist() for kk, v in rnd.scores.items()}}
    chosen = [h for h, _ in top]
    for task in ("induction", "recall"):
        ps, ts = _prompts(m, task, n)
        means = head_means(m, ps)
        a = ablate_heads(m, chosen, ps, ts, means=means)
        ctrl = random_heads_control(m, len(chosen), ps, ts, n_draws=10, exclude=chosen, means=means)
        acc = [c["accuracy"] for c in ctrl]
        lp = [c["logprob"] for c in ctrl]
        print(f"{task:>9}: accuracy {a['base_accuracy']:.3f} -> {a['accuracy']:.3f} with the top {k} induction "
              f"heads mean-ablated; {len(ctrl)} random sets of {k}: {np.mean(acc):.3f} ± {np.std(acc):.3f} "
              f"(min {min(acc):.3f}); log-prob {a['base_logprob']:.3f} -> {a['logprob']:.3f} vs random "
              f"{np.mean(lp):.3f}")
        out[task] = {**a, "random_accuracy": acc, "random_logprob": lp}
        # the causal ranking: every head mean-ablated alone
        n_layers, n_heads = np.asarray(r.scores["induction"]).shape
        single = sorted(
            ((ablate_heads(m, [(ly, h)], ps, ts, means=means)["accuracy"], (ly, h))
             for ly in range(n_layers) for h in range(n_heads)),
        )
        print(f"{task:>9}: heads ablated one at a time, most harmful: "
              + ", ".join(f"L{ly}H{h} -> {v:.3f}" for v, (ly, h) in single[:4]))
        out[task]["single_head_accuracy"] = [[ly, h, v] for v, (ly, h) in single]
    return out


def atp(m: Any, n: int) -> dict[str, Any]:
    from lmxray.errors import InputError
    from lmxray.internals import activation_patching, attribution_patching

    kinds = ["resid_pre", "attn.out", "mlp.out", "attn.head_out"]
    exact: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    approx: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    used = 0
    for e in zoo_examples("ioi", "test", 4 * n):
        io, s = e.meta["io"], e.meta["s"]
        head, tail = e.prompt.rsplit(f" {s} ", 1)  # corrupt the second mention of the subject
        corrupt = f"{head} {io} {tail}"
        if len(m.encode(corrupt)) != len(m.encode(e.prompt)):
            continue
        try:
            ex = activation_patching(m, e.prompt, corrupt, f" {io}", f" {s}", sites=kinds)
        except InputError:  # the corruption changes nothing for this pair
            continue
        ap = attribution_patching(m, e.prompt, corrupt, f" {io}", f" {s}", sites=kinds)
        for k in kinds:
            exact[k].append(ex.effects[k].ravel())
            approx[k].append(ap.effects[k].ravel())
        used += 1
        if used >= n:
            break
    if not used:
        print("no IOI pair with a token-aligned corruption for this tokenizer")
        return {"n_pairs": 0}
    r = {k: float(np.corrcoef(np.concatenate(exact[k]), np.concatenate(approx[k]))[0, 1]) for k in kinds}
    per = {k: float(np.nanmean([np.corrcoef(a, b)[0, 1] for a, b in zip(exact[k], approx[k], strict=True)]))
           for k in kinds}
    print(f"attribution vs exact patching on {used} IOI pairs (logit difference IO - S), Pearson r pooled: "
          + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print("  mean of per-pair r: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
    return {"n_pairs": used, "pearson_pooled": r, "pearson_mean_per_pair": per}


def probes(m: Any) -> dict[str, Any]:
    from lmxray.internals import probe, subject_positions

    items = [f for f in facts(n=None, relation="capital") if f["continent"]]
    pos = [max(subject_positions(m, f["prompt"], f["subject"])) for f in items]
    r = probe(m, [f["prompt"] for f in items], [f["continent"] for f in items], position=pos,
              control_keys=[f["subject_text"] for f in items], cv=5)
    print(r.table())
    layer, acc, sel = r.best()
    print(f"best: layer {layer}, accuracy {acc:.3f}, selectivity {sel:.3f}")
    return r.to_dict()


def lens(m: Any, steps: int) -> dict[str, Any]:
    from lmxray.internals import TunedLens, lens_kl

    train = texts(n=2000, split="train")
    test = [t for t in texts(n=400, split="test") if t not in set(train)]
    tl = TunedLens.fit(m, train, steps=steps, progress=False)
    a, b = lens_kl(m, test), lens_kl(m, test, tl)
    labels = ["embed"] + [str(i) for i in range(m.n_layers)]
    print(f"held-out KL(final || lens) in nats on {len(test)} zoo test texts:")
    print("        " + " ".join(f"{x:>8}" for x in labels))
    print("logit   " + " ".join(f"{x:8.4f}" for x in a))
    print("tuned   " + " ".join(f"{x:8.4f}" for x in b))
    print("tuned < logit at every layer but the last:", bool((b[:-1] < a[:-1]).all()))
    return {"layers": labels, "kl_logit": a.tolist(), "kl_tuned": b.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="trace,heads,atp,probe,lens")
    ap.add_argument("--facts", type=int, default=100, help="facts to trace (the known ones are kept)")
    ap.add_argument("--n", type=int, default=200, help="examples per task for head ablation")
    ap.add_argument("--pairs", type=int, default=30, help="IOI pairs for attribution patching")
    ap.add_argument("--k", type=int, default=2, help="induction heads to ablate")
    ap.add_argument("--lens-steps", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default=None, help="another model than the zoo default (smoke runs)")
    ap.add_argument("--all-facts", action="store_true", help="trace facts the model does not know too")
    ap.add_argument("--kinds", default="resid_post", help="causal tracing: comma list of resid_post, mlp.out, attn.out")
    ap.add_argument("--window", type=int, default=10, help="causal tracing window for mlp.out/attn.out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lmxray

    m = lmxray.load(args.model) if args.model else lmxray.load()
    print(m)
    todo = args.only.split(",")
    out: dict[str, Any] = {"model": m.name}
    steps = {"trace": lambda: trace(m, args.facts, not args.all_facts, tuple(args.kinds.split(",")), args.window), "heads": lambda: heads(m, args.n, args.k),
             "atp": lambda: atp(m, args.pairs), "probe": lambda: probes(m), "lens": lambda: lens(m, args.lens_steps)}
    for name in todo:
        t = time.perf_counter()
        print(f"\n=== {name} ===")
        out[name] = steps[name]()
        out[name + "_seconds"] = time.perf_counter() - t
        print(f"({time.perf_counter() - t:.1f} s)")
    if args.json:
        from lmxray.io import to_jsonable

        with open(args.json, "w") as fh:
            json.dump(to_jsonable(out), fh, indent=1, default=float)


if __name__ == "__main__":
    main()
