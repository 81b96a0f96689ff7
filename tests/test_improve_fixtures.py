"""Files written by the improve code before the refactor (commit 68fd237, tests/fixtures/improve/)
still load, and the new code writes the same formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from lmxray.errors import FormatError
from lmxray.improve.results import (
    AmplifyResult,
    EditReport,
    EditResult,
    FinetuneResult,
    RRRReport,
    ShortcutReport,
    SteeringSweep,
    SteeringVector,
)

FIX = Path(__file__).parent / "fixtures" / "improve"


def test_old_steering_vector_loads_and_round_trips(tmp_path):
    v = SteeringVector.load(FIX / "steering_vector_v1.safetensors")
    expected = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    assert np.array_equal(v.vector, expected)
    assert (v.layer, v.site, v.n_pos, v.n_neg) == (2, "resid_pre", 10, 12)
    assert v.resid_norm == 3.25 and v.projected is True
    assert v.model_name == "lmxray-tiny" and v.info == {"note": "old"}
    # written again by the new code: same format name, metadata now JSON values
    p = v.save(tmp_path / "v.safetensors")
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "lmxray.steering/1" and meta["projected"] == "true"
    w = SteeringVector.load(p)
    assert np.array_equal(w.vector, v.vector) and w.to_dict().keys() == v.to_dict().keys()
    assert (w.layer, w.site, w.projected, w.resid_norm, w.info) == (2, "resid_pre", True, 3.25, v.info)
    assert "layers.2.resid_pre" in v.table()


def test_old_json_results_load():
    sw = SteeringSweep.load(FIX / "steering_sweep_v1.json")
    assert sw.layers == [0, 1] and np.isnan(sw.flip[1, 1]) and sw.flip[0, 1] == 0.5
    assert "flip" in sw.table()
    rep = ShortcutReport.load(FIX / "shortcuts_v1.json")
    assert rep.top(1) == ["Tuesday"] and rep.labels == {"negative": 40, "positive": 60}
    assert "Tuesday" in rep.table()
    ft = FinetuneResult.load(FIX / "finetune_v1.json")
    assert ft.model is None and ft.model_name == "lmxray-tiny"
    assert ft.config.steps == 4 and ft.config.lam == 1.0 and ft.classes == [" positive", " negative"]
    assert ft.history == [{"step": 0, "ce": 1.5, "penalty": 0.25}] and "1.500" in ft.table()
    ed = EditReport.load(FIX / "edits_v1.json")
    assert ed.layer == 1 and ed.rows["located"]["efficacy"] == 1.0 and "located" in ed.table()
    amp = AmplifyResult.load(FIX / "amplify_v1.json")
    assert amp.accuracy["amplify"] == 0.7 and amp.demos[0]["words"] == ["bad"]
    assert "amplify" in amp.table()
    rrr = RRRReport.load(FIX / "rrr_v1.json")
    assert rrr.penalised == ["Tuesday"] and rrr.rows["base"]["shift"] == 0.6
    assert "0.300" in rrr.table()  # ID - shift
    one = EditResult.load(FIX / "edit_v1.json")
    assert (one.before, one.after, one.layer) == (" Paris", " Rome", 1)
    assert one.table().startswith("layer 1: The capital of France is[ Paris] -> [ Rome]")


@pytest.mark.parametrize("cls, name", [
    (ShortcutReport, "shortcuts_v1.json"), (SteeringSweep, "steering_sweep_v1.json"),
    (FinetuneResult, "finetune_v1.json"), (EditReport, "edits_v1.json"),
    (AmplifyResult, "amplify_v1.json"), (RRRReport, "rrr_v1.json"), (EditResult, "edit_v1.json"),
])
def test_new_json_equals_old_json(cls, name):
    """Loading and writing again gives the same JSON document (format names kept)."""
    old = json.loads((FIX / name).read_text())
    new = json.loads(cls.load(FIX / name).to_json())
    assert new == old


def test_wrong_format_is_refused(tmp_path):
    with pytest.raises(FormatError, match="lmxray.shortcuts"):
        ShortcutReport.load(FIX / "rrr_v1.json")
    with pytest.raises(FormatError):
        SteeringVector.load(FIX / "shortcuts_v1.json")
