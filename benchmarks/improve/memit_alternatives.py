"""MEMIT at seeds 0 and 1 (the tuning seeds): what was tried to lift seed 1's efficacy, on the
targets cached by ``memit_sweep.py SEED 0 1 0.5 0 30`` (run that first: it writes the
covariance, preserved-key and target caches to /tmp/lmxray_memit_sweep_*.safetensors). Layer 0,
key rows "prompt"; efficacy / paraphrase / specificity (and fluency with FLUENCY > 0 prompts).

    PYTHONPATH=src python3 benchmarks/improve/memit_alternatives.py SEED MODES [FLUENCY]

MODES, comma-separated:
  base:LAM:MU                      the default solve (memit_edit with correct_rounds=0)
  null:LAM:MU:THR                  AlphaEdit-style: the update restricted to the null space of the
                                   preserved keys' second moment (eigenvalues < THR), solved by
                                   least squares inside it
  adapt:THR:CLAMP:WD:STEPS:L_M/..  targets with P(new) < THR re-optimised with a wider clamp
                                   (per-edit adaptive clamp), then solved at each LAM_MU
  correct:LAM:MU:ROUNDS:CLAMP:WD:STEPS  target correction (memit_edit's correct_rounds): the
                                   requests unmet after the solve get δ' optimised on the
                                   edited model, target z + δ', all solved again
e.g. ... memit_alternatives.py 1 base:30:10,null:30:10:0.01,correct:30:10:2:1:0.5:60
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

import lmxray
from lmxray.cli.internals import zoo_facts
from lmxray.improve import memit as M
from lmxray.improve.editing import _choose_facts, context_prefixes, counterfactuals
from lmxray.zoo import corpus


def _load(name: str) -> dict[int, torch.Tensor] | dict[str, torch.Tensor]:
    path = f"/tmp/lmxray_memit_sweep_{name}.safetensors"
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run benchmarks/improve/memit_sweep.py SEED 0 1 0.5 0 30 first")
    return load_file(path)


class Setup:
    """The seed's 100 requests, specificity prompts, caches and the solve / measure helpers."""

    def __init__(self, seed: int, n_fluency: int) -> None:
        m, facts = lmxray.load(), zoo_facts(n=None)
        self.m, self.facts, self.seed, self.n_fluency = m, facts, seed, n_fluency
        texts = corpus("train", M.COV_TEXTS, seed=seed)
        self.cov = {int(k): v for k, v in _load(f"covs_{seed}").items()}[0]
        self.pres = {int(k): v for k, v in _load(f"preserve_{seed}").items()}[0]
        self.chosen, self.groups = _choose_facts(facts, np.ones(len(facts), bool), 100, seed,
                                                 one_per_subject=True)
        self.new = [" " + t.strip() for t in
                    counterfactuals([facts[i] for i in self.chosen], facts, seed=seed)]
        edited = {str(facts[i].get("subject_text")) for i in self.chosen}
        others = [j for j in range(len(facts)) if str(facts[j].get("subject_text")) not in edited]
        self.spec = random.Random(seed + 2).sample(others, 200)
        self.reqs = [M.EditRequest(facts[i]["prompt"], str(facts[i]["subject"]), t)
                     for i, t in zip(self.chosen, self.new, strict=True)]
        self.prefixes = context_prefixes(texts, 2, seed=seed)
        self.b = M._rows(m, self.reqs, self.prefixes)
        self.h0 = M._read(m, self.b, "layers.0.resid_post", len(self.reqs))
        self.keys = M._read(m, self.b, "layers.0.mlp.hidden", len(self.reqs), "prompt")
        tg = _load(f"targets_{seed}_0_1.0_0.5")
        self.delta, self.p = tg["delta"], tg["p"]
        self.t0 = time.time()

    def measure(self, dw: torch.Tensor, tag: str) -> np.ndarray:
        with M.weights_added(self.m, {0: dw.float()}):
            a, per = M._measure(self.m, self.chosen, self.facts, self.groups, self.new, self.spec,
                                self.n_fluency)
        print(f"seed {self.seed} {tag}: efficacy {a['efficacy']:.3f} paraphrase "
              f"{a['paraphrase']:.3f} specificity {a['specificity']:.3f} fluency "
              f"{a['fluency']:.3f} ({time.time() - self.t0:.0f} s)", flush=True)
        return per[0]

    def solve(self, d: torch.Tensor, lam: float, mu: float, null_thr: float | None = None
              ) -> torch.Tensor:
        """One layer: all of ``z - h = δ`` is written at layer 0."""
        k, r = self.keys.double(), (self.h0 + d.double()) - self.h0
        if null_thr is None:
            return M.least_squares_update(k, r, self.cov, lam, self.pres, mu)
        e, u = torch.linalg.eigh(self.pres)
        u = u[:, e < null_thr]
        a = u.T @ (lam * self.cov + k.T @ k + mu * self.pres) @ u
        return torch.linalg.solve(a, u.T @ k.T @ r).T @ u.T

    def optimise(self, idx: list[int], h: torch.Tensor, clamp: float, wd: float, steps: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return M._chunked_targets(self.m, [self.reqs[i] for i in idx], self.prefixes,
                                  "layers.0.resid_post", h[idx], 25, {
                                      "steps": steps, "lr": 0.5, "kl_factor": 0.0625,
                                      "weight_decay": wd, "clamp": clamp, "stop_prob": 0.95})


def adapt(s: Setup, thr: float, clamp: float, wd: float, steps: int, solves: str) -> None:
    miss = [i for i in range(len(s.reqs)) if float(s.p[i]) < thr]
    d2, p2 = s.optimise(miss, s.h0, clamp, wd, steps)
    d = s.delta.clone()
    d[miss] = d2
    print(f"  {len(miss)} targets under P(new) {thr}: {[round(float(s.p[i]), 2) for i in miss]}"
          f" -> clamp {clamp}: {[round(float(x), 2) for x in p2]}", flush=True)
    for lm in solves.split("/"):
        lam, mu, *nt = lm.split("_")
        s.measure(s.solve(d, float(lam), float(mu), float(nt[0]) if nt else None),
                  f"adapt thr {thr} clamp {clamp} wd {wd} steps {steps} lambda {lam} mu {mu}"
                  f" null {nt[0] if nt else '-'}")


def correct(s: Setup, lam: float, mu: float, rounds: int, clamp: float, wd: float,
            steps: int) -> None:
    d = s.delta.clone()
    dw = s.solve(d, lam, mu)
    eff = s.measure(dw, f"correct round 0 lambda {lam} mu {mu}")
    for r in range(rounds):
        miss = [i for i in range(len(s.reqs)) if not eff[i]]
        with M.weights_added(s.m, {0: dw.float()}):
            he = M._read(s.m, s.b, "layers.0.resid_post", len(s.reqs))
            d2, p2 = s.optimise(miss, he, clamp, wd, steps)
        print(f"  round {r + 1}: {len(miss)} unmet, P(new) on the edited model "
              f"{[round(float(x), 2) for x in p2]}", flush=True)
        d[miss] = d[miss] + d2
        dw = s.solve(d, lam, mu)
        eff = s.measure(dw, f"correct round {r + 1} lambda {lam} mu {mu} clamp {clamp}")


def main() -> None:
    torch.set_num_threads(1)
    s = Setup(int(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    for mode in sys.argv[2].split(","):
        kind, *a = mode.split(":")
        if kind == "base":
            s.measure(s.solve(s.delta, float(a[0]), float(a[1])), f"base lambda {a[0]} mu {a[1]}")
        elif kind == "null":
            s.measure(s.solve(s.delta, float(a[0]), float(a[1]), float(a[2])),
                      f"null lambda {a[0]} mu {a[1]} thr {a[2]}")
        elif kind == "adapt":
            adapt(s, float(a[0]), float(a[1]), float(a[2]), int(a[3]), a[4])
        elif kind == "correct":
            correct(s, float(a[0]), float(a[1]), int(a[2]), float(a[3]), float(a[4]), int(a[5]))


if __name__ == "__main__":
    main()
