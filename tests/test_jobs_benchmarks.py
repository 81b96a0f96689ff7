"""The GPU benchmark script, run at tiny shapes on CPU (float32): every peer explains the same
ids, Captum's LayerIntegratedGradients agrees with lmxray, a missing Inseq is reported "not run",
and without a GPU the full run says "not measured" instead of timing a CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_tiny_run_agrees_with_captum_and_reports_missing_peers(tmp_path, capsys):
    bench = _load()
    rows = bench.main(["--tiny", "--out", str(tmp_path / "gpu.json")])
    (row,) = rows
    assert isinstance(row["lmxray"]["seconds"], float)
    if importlib.util.find_spec("captum"):
        assert row["captum"]["agrees"], row["captum"]
        assert row["captum"]["max_rel_diff"] < 1e-4  # float32: the same numbers
        assert row["captum"]["speedup"] > 0
    if importlib.util.find_spec("inseq") is None:
        assert row["inseq"]["seconds"] == "not run"
    out = capsys.readouterr().out
    assert "| tiny |" in out and (tmp_path / "gpu.json").is_file()


def test_without_a_gpu_the_floors_are_not_measured(capsys, monkeypatch):
    bench = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == []
    assert "not measured" in capsys.readouterr().out


def test_flops_and_cases_match_the_anchors():
    bench = _load()
    assert bench.CASES["1.1b"]["prompt"] == 512 and bench.CASES["1.1b"]["batch"] == 32
    assert bench.CASES["6.7b"]["targets"] == 16 and bench.CASES["6.7b-2048"]["prompt"] == 2048
    shape = {"prompt": 4, "targets": 2, "steps": 3}
    assert bench.flops(shape, 10) == 6.0 * 10 * (4 * 3 + 5 * 3)
