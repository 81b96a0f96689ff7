#!/usr/bin/env python3
"""Faithfulness metrics: lmxray vs a reference implementation and vs interpreto 0.5.2.

    benchmarks/.peers/venv-interpreto/bin/python benchmarks/evaluate/bench_faithfulness.py \
        [--repeats 3] [--n 100] [--json out.json]

Runs in ``venv-interpreto`` (interpreto 0.5.2, transformers 5.x, lmxray editable; made by
``benchmarks/setup_peers.sh interpreto model``), 2 threads, on the bench GPT-2
(``benchmarks/.peers/model``: 6 layers, d=512, vocab 8192, random init). One run times lmxray and
the peer side by side (median of ``--repeats`` after one warm-up; in part 2 the two libraries'
calls are interleaved A B, B A, ... so that load changes hit both) and checks that the numbers
agree.

Part 1, comprehensiveness + sufficiency (ERASER AOPC, bins 1/5/10/20/50 %), 100 examples: 16-token
windows of licence text (the bench tokenizer's corpus) with the next 2 tokens as target, scored by
lmxray saliency. ferret (0.4.2) does not apply: its AOPC evaluators need a sequence-
classification model (``_get_class_predicted_probability``) and round-trip the ids through text
(``decode`` then re-tokenise), so there is no next-token target to score. The reference is
ferret's algorithm on token ids instead: per example and target step, one right-padded batch of
that step's perturbations (full input, each bin's removal and keep-only sets), full logits, the
target's probability at the last real position; written here without lmxray code.

Part 2, deletion + insertion curves (20 steps) on the standard bench input (40-token prompt,
forced 10-token target), for the same saliency scores: interpreto's ``Deletion`` / ``Insertion``
(``n_perturbations=20``, tokens replaced by ``<unk>``, batch 64) vs lmxray
``faithfulness(metrics=["deletion"|"insertion"], removal="baseline", baseline=0, n_steps=20)``.
interpreto's input for step t is the prompt plus targets up to and including t; the step's own
target token has a NaN score, which ``torch.argsort`` puts first, so every interpreto curve spends
its first perturbation masking a token the step cannot read and spreads its 20 steps over
41 + t positions; lmxray ranks only the 40 + t positions step t reads. The values are compared
where both curves mask the same readable tokens (interpreto point m = lmxray k + 1).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "runners"))
import _common as C  # noqa: E402

C.setup_threads(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402

BINS = (1, 5, 10, 20, 50)


def timed(fn, repeats, warmup=True):
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def timed_pair(fa, fb, repeats):
    """Median times of two calls interleaved A B, B A, A B... after one warm-up each."""
    out_a, out_b = fa(), fb()
    ta, tb = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if which == 0:
                out_a = fa()
                ta.append(time.perf_counter() - t0)
            else:
                out_b = fb()
                tb.append(time.perf_counter() - t0)
    return (statistics.median(ta), ta, out_a), (statistics.median(tb), tb, out_b)


# ----------------------------------------------------------------------------- part 1
def license_examples(tok, n, n_prompt=16, n_target=2):
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    text = " ".join(open(f, encoding="utf-8", errors="replace").read() for f in files if os.path.isfile(f))
    ids = tok(" ".join(text.split()), add_special_tokens=False)["input_ids"]
    step = max(1, (len(ids) - n_prompt - n_target) // n)
    out = []
    for i in range(n):
        w = ids[i * step: i * step + n_prompt + n_target]
        out.append((tok.decode(w[:n_prompt]), w[:n_prompt], w[n_prompt:]))
    return out


def reference_aopc(hf, attrs):
    """ferret's AOPC algorithm on token ids (see the module docstring), no lmxray code."""
    comp_all, suff_all = [], []
    with torch.no_grad():
        for a in attrs:
            ids = list(a.source_ids)
            n_p = a.prompt_length
            comp_steps, suff_steps = [], []
            for t, y in enumerate(a.target_ids):
                prefix = ids[: n_p + t]
                n = len(prefix)
                s = np.asarray(a.scores[t, :n], dtype=np.float64)
                order = sorted(range(n), key=lambda i: (-s[i], i))
                ks = [min(n, max(1, math.ceil(round(b * n / 100, 9)))) for b in BINS]
                seqs = [prefix]
                for k in ks:
                    top = set(order[:k])
                    seqs.append([x for i, x in enumerate(prefix) if i not in top])
                    seqs.append([x for i, x in enumerate(prefix) if i in top])
                L = max(len(q) for q in seqs)
                batch = torch.zeros((len(seqs), L), dtype=torch.long)
                mask = torch.zeros((len(seqs), L), dtype=torch.long)
                for j, q in enumerate(seqs):
                    batch[j, : len(q)] = torch.tensor(q)
                    mask[j, : len(q)] = 1
                logits = hf(input_ids=batch, attention_mask=mask).logits
                last = mask.sum(1) - 1
                p = torch.softmax(logits[torch.arange(len(seqs)), last].float(), -1)[:, y].numpy()
                comp_steps.append(np.mean([p[0] - p[1 + 2 * b] for b in range(len(BINS))]))
                suff_steps.append(np.mean([p[0] - p[2 + 2 * b] for b in range(len(BINS))]))
            comp_all.append(np.mean(comp_steps))
            suff_all.append(np.mean(suff_steps))
    return np.array(comp_all), np.array(suff_all)


def part1(m, hf, tok, n, repeats):
    from lmxray.evaluate import faithfulness

    exs = license_examples(tok, n)
    attrs = m.attribute([e[0] for e in exs], target=[tok.decode(e[2]) for e in exs], method="saliency")
    for a, e in zip(attrs, exs, strict=True):  # the round trip through text kept the ids
        assert list(a.source_ids) == e[1] + e[2], "tokenisation round trip changed the ids"

    def ours():
        fs = faithfulness(m, attrs, metrics=["comprehensiveness", "sufficiency"])
        return (np.array([f.summary()["comprehensiveness"] for f in fs]),
                np.array([f.summary()["sufficiency"] for f in fs]))

    def ref():
        return reference_aopc(hf, attrs)

    t_ref, times_ref, (rc, rs) = timed(ref, repeats, warmup=False)  # slow, no warm-up needed
    t_ours, times_ours, (oc, osuf) = timed(ours, repeats)
    diff = float(max(np.abs(rc - oc).max(), np.abs(rs - osuf).max()))
    return {
        "examples": n, "target_steps": int(sum(len(a.target_tokens) for a in attrs)),
        "lmxray_s": t_ours, "reference_s": t_ref, "ratio": t_ref / t_ours,
        "lmxray_times": times_ours, "reference_times": times_ref, "max_abs_diff": diff,
        "mean_comprehensiveness": float(oc.mean()), "mean_sufficiency": float(osuf.mean()),
    }


# ----------------------------------------------------------------------------- part 2
def part2(m, hf, tok, repeats, batch_size=64):
    import interpreto
    from interpreto import Granularity
    from interpreto.attributions import InferenceModes
    from interpreto.attributions.metrics import Deletion, Insertion

    from lmxray.evaluate import faithfulness
    from lmxray.result import Attribution

    p_ids, t_ids = C.check_tokens(tok)
    tok.mask_token = "<unk>"  # interpreto replaces by id 0 instead of adding a token
    sal = interpreto.Saliency(model=hf, tokenizer=tok, granularity=Granularity.TOKEN,
                              inference_mode=InferenceModes.LOG_SOFTMAX, batch_size=4)
    expl = sal.explain(C.PROMPT, targets=C.TARGET)
    scores = expl[0].attributions.detach().cpu().numpy().astype(np.float32)  # [10, 50]
    ids = [int(x) for x in expl[0].model_inputs_to_explain["input_ids"][0]]
    assert ids == p_ids + t_ids
    lp = m.logits(ids[:-1])  # target scores, only for the Attribution record
    tgt = torch.log_softmax(lp[C.N_PROMPT - 1:].float(), -1)[torch.arange(C.N_TARGET), torch.tensor(t_ids)]
    a = Attribution(m.token_strings(ids), m.token_strings(t_ids), C.causal_mask(scores), tgt.numpy(),
                    "interpreto-saliency", m.name, {"target_fn": "logprob"}, ids, t_ids)
    out = {}
    for which, cls in (("deletion", Deletion), ("insertion", Insertion)):
        metric = cls(hf, tok, n_perturbations=20, batch_size=batch_size)
        peer = lambda metric=metric: metric.evaluate(expl)  # noqa: E731
        ours = lambda which=which: faithfulness(  # noqa: E731
            m, a, metrics=[which], removal="baseline", baseline=0, n_steps=20)
        (t_peer, times_peer, (auc_peer, curves_peer)), (t_ours, times_ours, f) = timed_pair(
            peer, ours, repeats)
        ours_curves = getattr(f, which)
        diffs, matched = [], 0
        for t in range(C.N_TARGET):
            # interpreto's input for step t is prompt + targets[:t + 1]: the step's own target
            # token is the last position, its NaN score sorts first, and it is masked first
            n_nan = 1
            n_valid = C.N_PROMPT + t
            peer_c = curves_peer[0][t].numpy()
            m_grid = [int(x) for x in torch.linspace(0, n_valid + n_nan, len(peer_c))]
            our_k = [(2 * j * n_valid + 20) // 40 for j in range(21)]
            for j_peer, mm in enumerate(m_grid):
                k = max(0, mm - n_nan)  # readable tokens removed (deletion) / back (insertion)
                if k <= n_valid and k in our_k:
                    j_ours = our_k.index(k)
                    diffs.append(abs(float(peer_c[j_peer]) - float(ours_curves[t, j_ours])))
                    matched += 1
        out[which] = {
            "lmxray_s": t_ours, "interpreto_s": t_peer, "ratio": t_peer / t_ours,
            "lmxray_times": times_ours, "interpreto_times": times_peer,
            "matched_points": matched, "max_abs_diff_matched": max(diffs) if diffs else None,
            "auc_lmxray": float(np.nanmean(getattr(f, f"{which}_auc"))), "auc_interpreto": float(auc_peer),
            "perturbed_sequences_lmxray": f.info["perturbed_sequences"],
        }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--json")
    ap.add_argument("--skip", choices=("part1", "part2"))
    args = ap.parse_args()
    import importlib.metadata as md

    import lmxray

    hf, tok = C.load_hf()
    m = lmxray.load(model=hf, tokenizer=tok)
    res = {"loadavg_start": os.getloadavg()[0], "threads": torch.get_num_threads(),
           "versions": {d: md.version(d) for d in ("torch", "transformers", "interpreto")}}
    if args.skip != "part1":
        res["aopc"] = part1(m, hf, tok, args.n, args.repeats)
        r = res["aopc"]
        print(f"comprehensiveness+sufficiency, {r['examples']} examples ({r['target_steps']} steps): "
              f"lmxray {r['lmxray_s']:.2f} s, reference loop {r['reference_s']:.2f} s, "
              f"ratio {r['ratio']:.2f}x, max |diff| {r['max_abs_diff']:.2e}", flush=True)
    if args.skip != "part2":
        res["curves"] = part2(m, hf, tok, args.repeats)
        for which, r in res["curves"].items():
            print(f"{which} (20 steps, bench input): lmxray {r['lmxray_s']:.2f} s, interpreto "
                  f"{r['interpreto_s']:.2f} s, ratio {r['ratio']:.2f}x, max |diff| "
                  f"{r['max_abs_diff_matched']:.2e} over {r['matched_points']} matched points; "
                  f"AUC lmxray {r['auc_lmxray']:.3e} interpreto {r['auc_interpreto']:.3e}", flush=True)
    res["loadavg_end"] = os.getloadavg()[0]
    if res["loadavg_end"] > 3 or res["loadavg_start"] > 3:
        print(f"warning: load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f} on "
              f"{os.cpu_count()} cores: timings are noisy", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
