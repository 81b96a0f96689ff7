"""MEMIT diagnosis on the zoo model: 100 edits at once (one per subject, seed 0 by default), the
targets optimised once per (target layer, clamp, weight decay) and cached, then the update
solved for each edit-layer set, key rows and λ; efficacy / paraphrase / specificity printed.

    PYTHONPATH=src python3 benchmarks/improve/memit_sweep.py SEED ZLAYER CLAMP WD LAYERSETS LAMS [KEY_ROWS]
    e.g. ... memit_sweep.py 0 0 1 0.5 0 100,300,500,1000 prompt
         ... memit_sweep.py 0 2 1 0.5 2/1,2/0,1,2 300,1000 mean

The figures are in docs/improve.md ("MEMIT") and benchmarks/results/improve_edit_distill.md.
Caches (covariances of 4000 zoo texts, targets) go to /tmp/lmxray_memit_sweep_*.pt.
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch

import lmxray
from lmxray.cli.internals import zoo_facts
from lmxray.improve import memit as M
from lmxray.improve.editing import _choose_facts, context_prefixes, counterfactuals, key_covariances
from lmxray.zoo import corpus


def main() -> None:
    torch.set_num_threads(1)
    m, facts = lmxray.load(), zoo_facts(n=None)
    seed, zl, clamp, wd = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    lsets = [[int(x) for x in ls.split(",")] for ls in sys.argv[5].split("/")]
    lams = [float(x) for x in sys.argv[6].split(",")]
    key_rows = sys.argv[7] if len(sys.argv) > 7 else "prompt"
    t0 = time.time()
    cf = f"/tmp/lmxray_memit_sweep_covs_{seed}.pt"
    if os.path.exists(cf):
        covs = torch.load(cf)
    else:
        covs = key_covariances(m, range(m.n_layers), corpus("train", M.COV_TEXTS, seed=seed))
        torch.save(covs, cf)
    chosen, groups = _choose_facts(facts, np.ones(len(facts), bool), 100, seed, one_per_subject=True)
    new = [" " + t.strip() for t in counterfactuals([facts[i] for i in chosen], facts, seed=seed)]
    edited = {str(facts[i].get("subject_text")) for i in chosen}
    others = [j for j in range(len(facts)) if str(facts[j].get("subject_text")) not in edited]
    spec = random.Random(seed + 2).sample(others, 200)
    reqs = [M.EditRequest(facts[i]["prompt"], str(facts[i]["subject"]), t)
            for i, t in zip(chosen, new, strict=True)]
    prefixes = context_prefixes(corpus("train", 300, seed=seed), 2, seed=seed)
    z_site = f"layers.{zl}.resid_post"
    b = M._rows(m, reqs, prefixes)
    h0 = M._read(m, b, z_site, len(reqs))
    df = f"/tmp/lmxray_memit_sweep_targets_{seed}_{zl}_{clamp}_{wd}.pt"
    if os.path.exists(df):
        delta, p = torch.load(df)
    else:
        delta, p = M._chunked_targets(m, reqs, prefixes, z_site, h0, 25, {
            "steps": 60, "lr": 0.5, "kl_factor": 0.0625, "weight_decay": wd, "clamp": clamp,
            "stop_prob": 0.95})
        torch.save((delta, p), df)
    print(f"targets at layer {zl}: P(new) mean {float(p.mean()):.3f} min {float(p.min()):.3f}, "
          f"|delta|/|h| {float((delta.norm(dim=-1) / h0.float().norm(dim=-1)).mean()):.2f}",
          flush=True)
    owner = M._key_owner(b, key_rows, len(reqs))
    z = M._read(m, b, z_site, len(reqs), key_rows) + delta.double()[owner]
    for ls in lsets:
        for lam in lams:
            deltas = M._spread(m, b, ls, covs, z, lam, len(reqs), key_rows)
            with M.weights_added(m, deltas):
                after, _ = M._measure(m, chosen, facts, groups, new, spec, 0)
            print(f"z {zl} clamp {clamp} wd {wd} layers {ls} keys {key_rows} lambda {lam}: "
                  + " ".join(f"{k} {after[k]:.3f}" for k in ("efficacy", "paraphrase",
                                                             "specificity")),
                  f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
