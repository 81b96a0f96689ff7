"""Internals results on the one Result base: files written by the pre-refactor code load with equal
numbers (fixtures in tests/fixtures/internals/, written by commit ab59505's parent code), the tuned
lens read back from an old safetensors file gives the old lens readout, views are registered in
lmxray.render.internals (colour bars, readable labels), the sweeps record out-of-memory back-offs,
and the CLI's defaults are the API's."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import lmxray
from lmxray.internals import (
    DEFAULT_WINDOW,
    HeadScores,
    LensResult,
    PatchingResult,
    TraceResult,
    TunedLens,
    activation_patching,
    causal_trace,
    logit_lens,
)
from lmxray.result import Result, renderer_for

FIX = Path(__file__).parent / "fixtures" / "internals"


def _arr(rows):
    return np.array([[np.nan if v is None else v for v in r] if isinstance(r, list) else
                     (np.nan if r is None else r) for r in rows], dtype=np.float64)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return lmxray.load()


def test_every_internals_result_is_a_result():
    for cls in (LensResult, PatchingResult, TraceResult, HeadScores, TunedLens):
        assert issubclass(cls, Result), cls
    from lmxray.internals import ProbeResult, TraceSummary

    for cls in (ProbeResult, TraceSummary):
        assert issubclass(cls, Result)
    for cls, kinds in ((LensResult, "console html png"), (PatchingResult, "console html png"),
                       (TraceResult, "console html png"), (TraceSummary, "console html png"),
                       (HeadScores, "console html png"), (ProbeResult, "console html"),
                       (TunedLens, "console html")):
        for kind in kinds.split():
            fn = renderer_for(cls, kind)
            assert fn is not None and fn.__module__ == "lmxray.render.internals", (cls, kind)


def test_old_lens_file_loads_with_equal_numbers():
    raw = json.loads((FIX / "lens_v1.json").read_text())
    r = LensResult.load(FIX / "lens_v1.json")
    assert r.FORMAT == raw["format"] == "lmxray.lens/1"
    assert r.tokens == raw["tokens"] and r.top_tokens == raw["top_tokens"] and r.target == raw["target"]
    np.testing.assert_array_equal(r.target_prob, np.asarray(raw["target_prob"], dtype=np.float32))
    np.testing.assert_array_equal(r.kl, np.asarray(raw["kl"], dtype=np.float32))
    np.testing.assert_array_equal(r.top_ids, np.asarray(raw["top_ids"]))
    np.testing.assert_array_equal(r.target_rank, np.asarray(raw["target_rank"]))
    # and the same file again, written by the new code, holds the same numbers
    again = json.loads(r.to_json())
    assert again["target_prob"] == raw["target_prob"] and again["top_tokens"] == raw["top_tokens"]


def test_old_lens_is_reproduced_by_the_new_code(tiny):
    old = LensResult.load(FIX / "lens_v1.json")
    new = logit_lens(tiny, "The capital of France is", " Paris", top_k=3)
    assert new.tokens == old.tokens and new.top_tokens == old.top_tokens
    np.testing.assert_allclose(new.target_prob, old.target_prob, rtol=1e-4, atol=1e-6)


def test_old_patching_and_trace_files_load_with_equal_numbers():
    raw = json.loads((FIX / "patching_v1.json").read_text())
    p = PatchingResult.load(FIX / "patching_v1.json")
    assert set(p.effects) == set(raw["effects"]) == {"resid_pre", "attn.head_out"}
    for k in raw["effects"]:
        np.testing.assert_array_equal(p.effects[k], np.asarray(raw["effects"][k], dtype=np.float32))
        np.testing.assert_array_equal(p.raw[k], np.asarray(raw["raw"][k], dtype=np.float32))
    assert p.clean_value == raw["clean_value"] and p.answer == raw["answer"]
    raw = json.loads((FIX / "trace_v1.json").read_text())
    t = TraceResult.load(FIX / "trace_v1.json")
    for k in raw["restored"]:
        np.testing.assert_array_equal(t.restored[k], np.asarray(raw["restored"][k], dtype=np.float32))
    assert (t.p_clean, t.p_corrupt, t.window, t.subject) == (raw["p_clean"], raw["p_corrupt"], raw["window"],
                                                             tuple(raw["subject"]))
    assert "window_requested" not in t.info and "2 layers" in t.to_html()
    h = HeadScores.load(FIX / "heads_v1.json")
    raw = json.loads((FIX / "heads_v1.json").read_text())
    np.testing.assert_array_equal(h.scores["induction"], np.asarray(raw["scores"]["induction"], dtype=np.float32))


def test_old_tuned_lens_loads_with_equal_numbers(tiny, tmp_path):
    lens = TunedLens.load(FIX / "tuned_lens_v1.safetensors")
    with safe_open(str(FIX / "tuned_lens_v1.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
    assert meta["n_layers"] == "4" and meta["model"] == "lmxray-tiny"  # old metadata: plain strings
    assert (lens.n_layers, lens.d_model, lens.model_name) == (4, 128, "lmxray-tiny")
    assert lens.info == json.loads(meta["info"]) and lens.info["steps"] == 3
    assert torch.equal(lens.weight, weight) and torch.equal(lens.bias, bias)
    # the old tuned-lens readout is what the new code computes with the old file
    old = LensResult.load(FIX / "tuned_lens_result_v1.json")
    new = logit_lens(tiny, "The capital of France is", " Paris", top_k=3, lens=lens)
    assert new.method == old.method == "tuned_lens" and new.top_tokens == old.top_tokens
    np.testing.assert_allclose(new.target_prob, old.target_prob, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.kl, old.kl, rtol=1e-3, atol=1e-5)
    # a round trip through the new writer keeps every number and the metadata types
    back = TunedLens.load(lens.save(tmp_path / "l.safetensors"))
    assert torch.equal(back.weight, lens.weight) and back.info == lens.info and back.n_layers == 4
    assert (tmp_path / "l.safetensors").stat().st_mode & 0o777 == _file_mode()
    assert "tuned lens" in lens._repr_html_() and "4 translators" in "".join(str(x) for x in lens.renderables())


def _file_mode() -> int:
    from lmxray.io import file_mode

    return file_mode()


def test_views_have_colour_bars_and_readable_labels(tiny):
    r = logit_lens(tiny, "The capital of France is", " Paris")
    html = r.to_html()
    assert html.count('class="cbar"') == 4 and "linear-gradient" in html
    assert "<th>2 capital</th>" in html and "··" not in html
    t = causal_trace(tiny, "The capital of France is", "France", n_samples=2)
    html = t.to_html()
    assert 'class="cbar"' in html and "<th>4 France*</th>" in html
    # the window as run and as asked (the CLI's default, capped by the model's 4 layers)
    assert t.window == 4 and t.info["window_requested"] == DEFAULT_WINDOW
    assert f"4 layers (asked {DEFAULT_WINDOW}; the model has 4)" in html
    png = t.to_png()
    assert png[:4] == b"\x89PNG"


def test_cli_defaults_are_the_apis():
    from lmxray.cli.internals import trace

    cli_window = inspect.signature(trace).parameters["window"].default
    assert cli_window == DEFAULT_WINDOW == inspect.signature(causal_trace).parameters["window"].default


def test_sweep_backs_off_on_out_of_memory_and_records_it(tiny, monkeypatch):
    from lmxray.internals import _sweep

    real = _sweep._Run.chunk
    calls: list[int] = []

    def flaky(self, p, idx):
        calls.append(len(idx))
        if len(idx) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, p, idx)

    clean, corrupt = "The capital of France is", "The capital of Italy is"
    exact = activation_patching(tiny, clean, corrupt, metric="prob", batch_size=8)
    monkeypatch.setattr(_sweep._Run, "chunk", flaky)
    r = activation_patching(tiny, clean, corrupt, metric="prob", batch_size=8)
    assert r.info["oom_backoff"][:2] == [[8, 4], [4, 2]] and calls[0] > 2
    np.testing.assert_allclose(r.effects["resid_pre"], exact.effects["resid_pre"], rtol=1e-5, atol=1e-6)
    assert "oom_backoff" not in exact.info


def test_internals_have_no_budget_of_their_own():
    src = (Path(lmxray.__file__).parent / "internals" / "_sweep.py").read_text()
    assert "_available_memory" not in src and not re.search(r"\b0\.6\b|\b0\.25\b|2 << 30", src)
