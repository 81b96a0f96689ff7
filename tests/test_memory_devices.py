"""Memory robustness: a single packed perturbation row that runs out of memory is split
(re-packed at half its width, down to plain rows) instead of failing, and every caller of
``memory.rows_that_fit`` (attribution chunks and stem groups, internals sweeps, generation) reads
the budget of every device a model computes on (``Model.devices``), not only its input device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
import lmxray.memory as mem
from conftest import build_tiny
from lmxray.attribution._budget import ScoreRow, rows_per_chunk
from lmxray.attribution._prefix import prefix_cache
from lmxray.attribution._stems import StemPlan, stem_groups
from lmxray.attribution.base import Context
from lmxray.internals._sweep import rows_budget
from lmxray.model import Model
from lmxray.selfexplain import generate as generate_module
from lmxray.selfexplain.generate import LocalGenerator
from lmxray.targets import resolve_target_fn
from test_jobs_memory import Tight

PROMPT, TARGET = "The capital of France is a city", " Paris"


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.mark.parametrize("tokens", [40, pytest.param(14, marks=pytest.mark.slow)])
def test_one_packed_row_out_of_memory_is_split_not_fatal(gpt2, tokens):
    """One pack per chunk (batch size 1), and every pack wider than the device allows: the pack
    is re-packed at half its width (40 positions) or down to plain rows (14), same numbers."""
    kw = dict(target=TARGET, method="occlusion", internal_batch_size=1)
    with prefix_cache("off"):
        free = gpt2.attribute(PROMPT, **kw)
    with prefix_cache("on"), Tight(gpt2, tokens) as t:
        a = gpt2.attribute(PROMPT, **kw)
    assert t.raised >= 1
    repack = a.info["oom_repack"]
    assert repack and all(after < before for before, after in repack)
    np.testing.assert_allclose(a.scores, free.scores, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_a_row_that_alone_does_not_fit_still_raises(gpt2):
    with prefix_cache("on"), Tight(gpt2, 3), pytest.raises(torch.OutOfMemoryError):
        gpt2.attribute(PROMPT, target=TARGET, method="occlusion", internal_batch_size=1)


@pytest.fixture
def two_gpus(gpt2, monkeypatch):
    """The model as if placed on cuda:0 (inputs) and cuda:1 (later layers), with 40 GiB free on
    the first device and 100 MiB on the second."""
    free = {"cuda:0": 40 << 30, "cuda:1": 100 << 20}
    monkeypatch.setattr(mem, "_cuda_free", lambda d: free[str(torch.device(d))])
    monkeypatch.setattr(Model, "device", property(lambda self: torch.device("cuda:0")))
    monkeypatch.setattr(Model, "devices", property(
        lambda self: [torch.device("cuda:0"), torch.device("cuda:1")]))
    return mem.available_memory(["cuda:0", "cuda:1"]), mem.available_memory("cuda:0")


def test_chunk_sizes_read_every_device_of_the_model(gpt2, two_gpus):
    budget_all, budget_first = two_gpus
    ctx = Context(target_fn=resolve_target_fn("logprob"))
    n = rows_per_chunk(gpt2, 4000, 4000, with_grad=True, ctx=ctx)
    sized = Context(target_fn=resolve_target_fn("logprob"), memory_budget=budget_all)
    first = Context(target_fn=resolve_target_fn("logprob"), memory_budget=budget_first)
    assert n == rows_per_chunk(gpt2, 4000, 4000, with_grad=True, ctx=sized)
    assert n < rows_per_chunk(gpt2, 4000, 4000, with_grad=True, ctx=first)


def test_stem_groups_read_every_device_of_the_model(gpt2, two_gpus):
    budget_all, budget_first = two_gpus
    rows = [ScoreRow(list(range(3, 3003)), [5])] + [
        ScoreRow([*range(3, 3 + k), 0, *range(4 + k, 3003)], [5]) for k in range(64, 128)
    ]
    plan = StemPlan(anchor=0, served=list(range(1, 65)), stems=list(range(64, 128)))

    def groups(budget=None):
        ctx = Context(target_fn=resolve_target_fn("logprob"), memory_budget=budget)
        return stem_groups(gpt2, rows, plan, ctx, kv_per_token=1 << 16, overhead=1e9)

    assert groups() == groups(budget_all)
    assert len(groups()) > len(groups(budget_first))


def test_internals_sweeps_read_every_device_of_the_model(gpt2, two_gpus):
    budget_all, budget_first = two_gpus
    n = rows_budget(gpt2, 3000, past=3000)
    assert n == rows_budget(gpt2, 3000, past=3000, memory_budget=budget_all)
    assert n < rows_budget(gpt2, 3000, past=3000, memory_budget=budget_first)


def test_generation_reads_every_device_of_the_model(gpt2, two_gpus, monkeypatch):
    budget_all, _ = two_gpus
    seen = []
    real = generate_module.rows_that_fit

    def spy(per_row, **kw):
        seen.append(kw["device"])
        return real(per_row, **kw)

    monkeypatch.setattr(generate_module, "rows_that_fit", spy)
    monkeypatch.setattr(LocalGenerator, "_greedy", lambda self, seqs, n, stop: [[] for _ in seqs])
    LocalGenerator(gpt2).generate_ids(["Hello there"], max_new_tokens=2)
    assert seen and list(seen[0]) == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert mem.available_memory(seen[0]) == budget_all
