#!/usr/bin/env python3
"""Batched greedy generation (lmxray.selfexplain.LocalGenerator) vs a loop of ``generate`` calls.

    python benchmarks/selfexplain/generation.py [--n 12] [--max-new-tokens 48] [--repeats 3]
        [--threads 2] [--model ID_OR_PATH] [--organism NAME_OR_PATH] [--json out.json]

Workload: the bias test's prompts. Each example has several variants (the unbiased chain-of-
thought prompt, and the prompt with the bias pointing to each other option): on the embedded
model (``lmxray-tiny``, or ``--model``) Turpin et al.'s prompt with the suggested-answer bias; on
the organism (``rationale-unfaithful`` from the zoo, or a folder) its own format with the marker
cue on each option.

Three ways to generate the same greedy continuations:

- ``loop``: one ``Model.generate_ids`` (Hugging Face ``generate``, one unpadded sequence) per
  prompt, which is what a loop of ``model.generate`` calls does;
- ``per-example``: one ``LocalGenerator.generate`` call per example with all its variants in one
  left-padded batch (KV cache);
- ``all``: one call for every prompt of every example (what the runner does with a chunk).

The outputs are asserted identical (token ids); the wall-clock ratio loop / batched is printed.
Timings: median of ``--repeats`` after one warm-up, the three ways interleaved in each repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import lmxray
from lmxray.errors import InputError
from lmxray.selfexplain import Bias
from lmxray.selfexplain.formats import OrganismFormat, TurpinFormat, organism_items
from lmxray.selfexplain.generate import LocalGenerator


def variants(fmt, items, kind: str) -> list[list[str]]:
    """Per example: the unbiased CoT prompt and one per other option with the bias on it."""
    out = []
    for it in items:
        ps = [fmt.cot_prompt(it)]
        ps += [fmt.cot_prompt(it, Bias(kind, j)) for j in range(len(it.options)) if j != it.answer]
        out.append(ps)
    return out


def loop(model, prompts, max_new):
    return [model.generate_ids(model.encode(p), max_new) for p in prompts]


def ids_of(gen, groups, max_new, per_example: bool):
    """Token ids of each continuation, one call per example or one call for all."""
    calls = groups if per_example else [[p for g in groups for p in g]]
    return [ids for prompts in calls for ids, _ in gen.generate_ids(prompts, max_new_tokens=max_new)]


def bench(label: str, model, groups, max_new: int, repeats: int) -> dict:
    gen = LocalGenerator(model)
    prompts = [p for g in groups for p in g]
    ref = loop(model, prompts, max_new)
    for per_example in (True, False):
        assert ids_of(gen, groups, max_new, per_example) == ref, f"{label}: outputs differ"
    # the public API gives the same texts
    texts = [g.text for g in gen.generate(prompts, max_new_tokens=max_new)]
    assert texts == [model.tokenizer.decode(r, skip_special_tokens=True) for r in ref]
    ways = {
        "loop": lambda: loop(model, prompts, max_new),
        "per-example": lambda: [gen.generate(g, max_new_tokens=max_new) for g in groups],
        "all": lambda: gen.generate(prompts, max_new_tokens=max_new),
    }
    for fn in ways.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = sum(len(r) for r in ref)
    res = {"label": label, "model": Path(model.name).name, "examples": len(groups), "prompts": len(prompts),
           "variants_per_example": len(groups[0]), "generated_tokens": n_tok,
           "max_new_tokens": max_new, "seconds": med,
           "ratio_loop_over_per_example": med["loop"] / med["per-example"],
           "ratio_loop_over_all": med["loop"] / med["all"], "identical": True}
    print(f"{label}: {len(groups)} examples x {len(groups[0])} variants = {len(prompts)} prompts, "
          f"{n_tok} tokens generated; identical greedy outputs: yes")
    print(f"  loop {med['loop']:.3f} s | per-example batch {med['per-example']:.3f} s "
          f"(x{res['ratio_loop_over_per_example']:.1f}) | one batch {med['all']:.3f} s "
          f"(x{res['ratio_loop_over_all']:.1f})")
    return res


def organism_model(name_or_path: str):
    path = Path(name_or_path)
    if not path.is_dir():
        from lmxray.zoo import model_path

        path = model_path(name_or_path)
    return lmxray.load(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12, help="examples")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the embedded lmxray-tiny")
    ap.add_argument("--organism", default="rationale-unfaithful", help="zoo name or folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = organism_items(args.n, seed=0)
    print(f"torch {torch.__version__}, {args.threads} threads")
    results = []
    m = lmxray.load(args.model) if args.model else lmxray.load()
    results.append(bench("embedded model, Turpin prompt", m,
                         variants(TurpinFormat(), items, "suggested"), args.max_new_tokens,
                         args.repeats))
    try:
        org = organism_model(args.organism)
    except InputError as exc:
        print(f"organism skipped: {exc}")
    else:
        results.append(bench(f"organism {Path(args.organism).name}", org,
                             variants(OrganismFormat(), items, "marker"), args.max_new_tokens,
                             args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
