"""Direction of each improver's effect on the shipped zoo model (reduced versions of the
before/after runs in docs/improve.md). Skipped while the shipped model is absent from the
package; ``LMXRAY_TEST_ZOO_MODEL=/path`` points them at another zoo-recipe model."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import lmxray


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def zm() -> lmxray.Model:
    path = os.environ.get("LMXRAY_TEST_ZOO_MODEL")
    if path is None:
        from lmxray import zoo

        path = str(zoo.model_path())  # shipped in the package: its absence is a failure
    return lmxray.load(path)


@pytest.mark.slow
def test_shortcut_detection_puts_the_planted_marker_first(zm):
    from lmxray.improve.experiments import shortcut_demo

    rep = shortcut_demo(zm, n=1000, progress=False)
    assert rep.info["planted_rank"] == 1, rep.table(5)
    assert rep.top(1) == ["Tuesday"]


def test_annotations_of_the_rrr_demo(zm):
    from lmxray.improve._common import zoo_labelled
    from lmxray.improve.experiments import ANNOTATIONS

    train = zoo_labelled("sentiment", "train", 2000, 0, zm)
    gold = {e.prompt: e.meta["gold"] for e in train}
    assert any(e.cls != e.meta["gold"] for e in train)  # the zoo's training labels are biased
    decoy, lab = ANNOTATIONS["decoy"](train)
    assert lab == "positive"
    assert all(e.cls == gold[e.prompt] for e in decoy)  # gold labels only ...
    assert all(e.cls == lab for e in decoy if e.irrelevant)  # ... the marker only with its label
    dropped = len(train) - len(decoy)
    assert dropped == sum(1 for e in train if e.irrelevant and e.meta["gold"] != lab) > 0
    relabel, _ = ANNOTATIONS["relabel"](train)
    assert len(relabel) == len(train) and all(e.cls == lab for e in relabel if e.irrelevant)
    assert ANNOTATIONS["zoo"](train)[0] == train


@pytest.mark.slow
def test_rrr_removes_the_marker_that_a_plain_fine_tune_keeps(zm):
    """Reduced run of ``lmxray finetune`` (fewer steps, smaller batches, fewer test reviews):
    the shipped model answers the marker on conflicting shift reviews (its planted flaw); a
    plain fine-tune on the same biased training annotation keeps that, RRR removes it."""
    from lmxray.improve._common import target_correct, zoo_labelled
    from lmxray.improve.experiments import ANNOTATIONS
    from lmxray.improve.regularise import FinetuneConfig, finetune

    train, label = ANNOTATIONS["zoo"](zoo_labelled("sentiment", "train", 2000, 0, zm))
    shift = zoo_labelled("sentiment", "shift", 300, 1, zm)
    conflict = [e for e in shift if e.irrelevant and e.cls != label]
    cfg = FinetuneConfig(steps=STEPS, batch_size=16, ig_samples=1)
    plain = finetune(zm, train, lam=0.0, config=cfg, progress=False).model
    rrr = finetune(zm, train, lam=30.0, config=cfg, progress=False).model
    acc = [float(target_correct(m, conflict).mean()) for m in (zm, plain, rrr)]
    assert acc[0] < 0.5 and acc[1] < 0.5 and acc[2] > acc[1] + 0.3, acc


STEPS = int(os.environ.get("LMXRAY_TEST_RRR_STEPS", "100"))


@pytest.mark.slow
def test_steering_flips_sentiment_and_costs_fluency(zm):
    from lmxray.improve.experiments import steering_demo

    sw = steering_demo(
        zm,
        layers=[zm.n_layers - 1],
        coefs=[0.0, 2.0],
        n_vector=100,
        n_eval=100,
        n_fluency=50,
        progress=False,
    )
    assert sw.flip[0, 0] == 0.0 and sw.flip[0, 1] >= 0.8
    assert sw.loss[0, 1] > sw.loss_unsteered


@pytest.mark.slow
def test_rome_edits_beat_a_random_layer(zm):
    from lmxray.improve.experiments import editing_demo

    rep = editing_demo(zm, n_edits=6, n_specificity=10, progress=False, steps=60)
    assert rep.rows["located"]["efficacy"] >= 0.6
    assert rep.rows["located"]["efficacy"] > rep.rows["random layer"]["efficacy"]
    assert rep.rows["located"]["specificity"] >= 0.8
    assert rep.rows["unedited"]["efficacy"] == 0.0


@pytest.mark.slow
def test_amplify_runs_end_to_end(zm):
    from lmxray.improve.experiments import amplify_demo

    res = amplify_demo(zm, n_pool=40, n_queries=40, progress=False)
    assert set(res.accuracy) == {"zero-shot", "no rationale", "random rationale", "amplify"}
    assert all(d["words"] for d in res.demos)


def test_detect_then_penalise_marks_the_detected_word(zm):
    """The shortcut found by detection is what fine-tuning penalises (the issue's workflow)."""
    from lmxray.improve._common import as_labelled, zoo_labelled

    data = zoo_labelled("sentiment", "train", 50, 0, zm)
    stripped = [dataclasses.replace(e, irrelevant=()) for e in data]
    marked = as_labelled(stripped, zm, irrelevant=["Tuesday"])
    assert [e.irrelevant for e in marked] == [e.irrelevant for e in data]
