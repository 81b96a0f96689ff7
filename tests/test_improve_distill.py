"""Rationale distillation: the organism data carry the evidence in the rationale, students train
on the one training loop and are scored on held-out items, the report round-trips and renders."""

from __future__ import annotations

import pytest

from lmxray.errors import InputError
from lmxray.improve.distill import (
    DistillConfig,
    DistillReport,
    distill_curve,
    distill_examples,
    train_student,
)
from lmxray.zoo import organisms

TINY = DistillConfig(n_train=12, n_test=6, steps=2, batch_size=4, d_model=16, n_layers=1,
                     n_heads=2, d_ff=32)


def test_examples_hold_label_and_evidence_without_the_cue():
    ex = distill_examples(5, 0, "train")
    items = organisms.items(5, seed=0, split="train")
    for e, it in zip(ex, items, strict=True):
        letter = organisms.LETTERS[it["answer"]]
        assert e["label"] == f" {letter})"
        assert f"({letter}) {it['meta']['evidence']} is a {it['meta']['category']}" in e["rationale"]
        assert organisms.MARKER not in e["prompt"]
    assert distill_examples(3, 0, "test") != distill_examples(3, 0, "train")


@pytest.mark.slow  # trains the students' tokenizer (seconds) and 8 tiny students
def test_curve_shapes_roundtrip_and_table(tmp_path):
    r = distill_curve((0.5, 1.0), (0, 1), config=TINY, progress=False)
    assert r.fractions == [0.5, 1.0] and r.seeds == [0, 1]
    for v in ("label only", "label + rationale"):
        assert len(r.accuracy[v]) == 2 and all(len(a) == 2 for a in r.accuracy[v])
        assert all(0.0 <= x <= 1.0 for a in r.accuracy[v] for x in a)
    r.save(tmp_path / "d.json")
    back = DistillReport.load(tmp_path / "d.json")
    assert back.accuracy == r.accuracy and back.config["steps"] == 2
    assert "label + rationale" in r.table() and "50%" in r.table()
    mean, sd = r.summary()["label only"][0]
    assert mean == pytest.approx(sum(r.accuracy["label only"][0]) / 2) and sd >= 0


@pytest.mark.slow
def test_student_is_deterministic_in_seed():
    train, test = distill_examples(8, 0, "train"), distill_examples(6, 0, "test")
    a = train_student(train, test, rationale=True, seed=3, config=TINY)
    b = train_student(train, test, rationale=True, seed=3, config=TINY)
    assert a == b
    with pytest.raises(InputError, match="training and test"):
        train_student(train, [], rationale=False, config=TINY)
