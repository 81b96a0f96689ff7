"""MEMIT diagnosis on the zoo model: 100 edits at once (one per subject), the targets optimised
once per (seed, target layer, clamp, weight decay) and cached, then the update solved for each
edit-layer set, key rows, preservation weight μ and λ; efficacy / paraphrase / specificity
printed. ``fluency SEED`` instead runs ``evaluate_memit`` with the defaults and prints every
fluency generation before and after the edits, with its n-gram entropy.

    PYTHONPATH=src python3 benchmarks/improve/memit_sweep.py SEED ZLAYER CLAMP WD LAYERSETS LAMS [KEY_ROWS [MUS]]
    e.g. ... memit_sweep.py 0 0 1 0.5 0 10,30,100 prompt 0,10,30
         ... memit_sweep.py 0 2 1 0.5 2/1,2/0,1,2 300,1000 mean 0
    PYTHONPATH=src python3 benchmarks/improve/memit_sweep.py fluency SEED
    PYTHONPATH=src python3 benchmarks/improve/memit_sweep.py control SEED,..

``control`` reads the fluency prompts of ``evaluate_memit`` on the *unedited* model three ways:
free (the unedited fluency), with the old answer written after the prompt and with the new
object written there (then greedy to 20 tokens): what the n-gram entropy does when only the
answer changes, no weight edited; with the standard error of each mean over its 30 prompts.

The figures are in docs/improve.md ("MEMIT") and benchmarks/results/improve_edit_distill.md.
Caches (covariances of 4000 zoo texts, preserved keys, targets) go to
/tmp/lmxray_memit_sweep_*.safetensors.
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import lmxray
from lmxray.cli.internals import zoo_facts
from lmxray.improve import edit_metrics as E
from lmxray.improve import memit as M
from lmxray.improve.editing import _choose_facts, context_prefixes, counterfactuals, key_covariances
from lmxray.zoo import corpus


def _cached(path: str, make):
    """``make()`` (a dict of tensors), saved to ``path`` once and read back after."""
    if os.path.exists(path):
        return load_file(path)
    out = {k: v.contiguous() for k, v in make().items()}
    save_file(out, path)
    return out


def fluency_generations(seed: int) -> None:
    """Every fluency generation of ``evaluate_memit`` (defaults) before and after the edits."""
    rec: list[list[tuple[str, str]]] = []

    def recording(model, prompts, max_new_tokens=20):
        texts = [E._greedy_past_eos(model, p, max_new_tokens) for p in prompts]
        rec.append(list(zip(prompts, texts, strict=True)))
        return float(np.mean([E.ngram_entropy(t) for t in texts]))

    M.fluency = recording  # type: ignore[assignment]
    r = M.evaluate_memit(lmxray.load(), zoo_facts(n=None), n_edits=100, seed=seed, progress=False)
    print({k: r.rows[k] for k in r.rows})
    low = [sum(E.ngram_entropy(t) < 2.0 for _, t in gens) for gens in rec]
    for (p, a), (_, b) in zip(*rec, strict=True):
        print(f"{p!r}\n  before {E.ngram_entropy(a):.2f} {a!r}\n  after  {E.ngram_entropy(b):.2f} {b!r}")
    print(f"generations under 2 bits (degenerate repetition): before {low[0]}, after {low[1]} "
          f"of {len(rec[0])}")


def fluency_control(seeds: list[int]) -> None:
    """The unedited model's fluency free, after the old answer and after the new object."""
    from lmxray.improve.editing import fact_group, plan_edits

    m, facts = lmxray.load(), zoo_facts(n=None)

    def forced(prompt: str, ans: str) -> str:
        ans = ans if ans.startswith(" ") else " " + ans
        ids = m.encode_target(ans)
        return m.tokenizer.decode(ids) + E._greedy_past_eos(m, prompt + ans, 20 - len(ids))

    for seed in seeds:
        chosen, groups, _, _, _ = plan_edits(m, facts, 100, None, 30, seed, one_per_subject=True)
        new = counterfactuals([facts[i] for i in chosen], facts, seed=seed)
        gen = [(facts[j]["prompt"], t, facts[j]["answer"]) for i, t in zip(chosen[:30], new[:30],
                                                                          strict=True)
               for j in groups[fact_group(facts[i])] if j != i][:30]
        out = {}
        for name, texts in (("free", [E._greedy_past_eos(m, p, 20) for p, _, _ in gen]),
                            ("old answer", [forced(p, a) for p, _, a in gen]),
                            ("new object", [forced(p, t) for p, t, _ in gen])):
            h = np.array([E.ngram_entropy(x) for x in texts])
            out[name] = h.mean()
            print(f"seed {seed} unedited, {name}: {h.mean():.3f} ± {h.std(ddof=1) / np.sqrt(len(h)):.3f}"
                  f" (se, {len(h)} prompts)", flush=True)
        print(f"seed {seed}: new object vs free {100 * (out['new object'] / out['free'] - 1):+.1f} %",
              flush=True)


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1] == "control":
        fluency_control([int(s) for s in sys.argv[2].split(",")])
        return
    if sys.argv[1] == "fluency":
        fluency_generations(int(sys.argv[2]))
        return
    m, facts = lmxray.load(), zoo_facts(n=None)
    seed, zl, clamp, wd = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    lsets = [[int(x) for x in ls.split(",")] for ls in sys.argv[5].split("/")]
    lams = [float(x) for x in sys.argv[6].split(",")]
    key_rows = sys.argv[7] if len(sys.argv) > 7 else "prompt"
    mus = [float(x) for x in sys.argv[8].split(",")] if len(sys.argv) > 8 else [M.PRESERVE_WEIGHT]
    t0 = time.time()
    texts = corpus("train", M.COV_TEXTS, seed=seed)
    covs = {int(k): v for k, v in _cached(
        f"/tmp/lmxray_memit_sweep_covs_{seed}.safetensors",
        lambda: {str(k): v for k, v in key_covariances(m, range(m.n_layers), texts).items()}).items()}
    chosen, groups = _choose_facts(facts, np.ones(len(facts), bool), 100, seed, one_per_subject=True)
    new = [" " + t.strip() for t in counterfactuals([facts[i] for i in chosen], facts, seed=seed)]
    edited = {str(facts[i].get("subject_text")) for i in chosen}
    others = [j for j in range(len(facts)) if str(facts[j].get("subject_text")) not in edited]
    spec = random.Random(seed + 2).sample(others, 200)
    keep = sorted({str(f["subject_text"]) for f in facts} - edited)
    pres = {int(k): v for k, v in _cached(
        f"/tmp/lmxray_memit_sweep_preserve_{seed}.safetensors",
        lambda: {str(k): v for k, v in M.preserved_keys(m, range(m.n_layers), texts, keep).items()}
    ).items()}
    reqs = [M.EditRequest(facts[i]["prompt"], str(facts[i]["subject"]), t)
            for i, t in zip(chosen, new, strict=True)]
    prefixes = context_prefixes(texts, 2, seed=seed)
    z_site = f"layers.{zl}.resid_post"
    b = M._rows(m, reqs, prefixes)
    h0 = M._read(m, b, z_site, len(reqs))

    def targets():
        d, p = M._chunked_targets(m, reqs, prefixes, z_site, h0, 25, {
            "steps": 60, "lr": 0.5, "kl_factor": 0.0625, "weight_decay": wd, "clamp": clamp,
            "stop_prob": 0.95})
        return {"delta": d, "p": p}

    tg = _cached(f"/tmp/lmxray_memit_sweep_targets_{seed}_{zl}_{clamp}_{wd}.safetensors", targets)
    delta, p = tg["delta"], tg["p"]
    print(f"targets at layer {zl}: P(new) mean {float(p.mean()):.3f} min {float(p.min()):.3f}, "
          f"|delta|/|h| {float((delta.norm(dim=-1) / h0.float().norm(dim=-1)).mean()):.2f}",
          flush=True)
    owner = M._key_owner(b, key_rows, len(reqs))
    z = M._read(m, b, z_site, len(reqs), key_rows) + delta.double()[owner]
    for ls in lsets:
        for mu in mus:
            for lam in lams:
                deltas = M._spread(m, b, ls, covs, z, lam, len(reqs), key_rows, pres, mu)
                with M.weights_added(m, deltas):
                    after, _ = M._measure(m, chosen, facts, groups, new, spec, 0)
                print(f"seed {seed} z {zl} clamp {clamp} wd {wd} layers {ls} keys {key_rows} "
                      f"mu {mu} lambda {lam}: "
                      + " ".join(f"{k} {after[k]:.3f}" for k in ("efficacy", "paraphrase",
                                                                 "specificity")),
                      f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
