"""Dataset jobs on a local Ray cluster with 2 CPU workers (slow: Ray's start-up alone takes
seconds). A worker process killed halfway through an evaluate run: its units are retried on the
restarted actor, no row is lost or repeated, and the table equals the in-process run."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import lmxray
from lmxray.evaluate import evaluate
from lmxray.internals.tracing import trace_facts
from lmxray.jobs import ModelSpec, RayExecutor, attribute_dataset

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "The capital of Italy is", "Berlin is in",
           "When Mary and John went to the store, John gave a drink to", "The quick brown fox",
           "k3=blue k7=red k1", "Madrid is in", "Lisbon is in", "A dog is not a", "The capital of Spain is"]
TARGETS = [" Paris", " Rome", " Germany", " Mary", " jumps", "=green", " Spain", " Portugal", " fox", " Madrid"]
EXAMPLES = [{"id": f"e{i}", "prompt": p, "target": t, "rationale": [p.split()[-1]]}
            for i, (p, t) in enumerate(zip(PROMPTS, TARGETS, strict=True))]
OPTS = {"methods": ["occlusion", "saliency"], "metrics": ["faithfulness", "plausibility"], "n_steps": 4,
        "bins": (10, 50), "batch_size": 1, "progress": False}


@pytest.fixture(scope="module")
def model():
    return lmxray.load()


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")  # installed with the [dev] and [ray] extras
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with RayExecutor(ModelSpec(), workers=2) as ex:
        yield ex
    ray.shutdown()


class KillOneWorkerHalfway:
    """Passes units to a RayExecutor and SIGKILLs one actor's process after half the results."""

    def __init__(self, ex: RayExecutor) -> None:
        self.ex, self.info, self.killed = ex, ex.info, None

    def map(self, fn, units):
        units = list(units)
        for k, result in enumerate(self.ex.map(fn, units)):
            if k == len(units) // 2:
                self.killed = self.ex.info["pids"][0]
                os.kill(self.killed, signal.SIGKILL)
            yield result


def _table(path):
    lines = [json.loads(x) for x in open(path, encoding="utf-8")]
    rows = [r for r in lines[1:] if r["kind"] == "row"]
    for r in rows:
        r.pop("attribution_seconds")
    return lines[0], rows


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float | list) and a[k] is not None:
            np.testing.assert_allclose(np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float),
                                       rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            assert a[k] == b[k], k


def test_killed_worker_loses_and_repeats_no_row(model, cluster, tmp_path):
    here = evaluate(model, EXAMPLES, out=tmp_path / "here.jsonl", **OPTS)
    killer = KillOneWorkerHalfway(cluster)
    there = evaluate(model, EXAMPLES, out=tmp_path / "ray.jsonl", executor=killer, **OPTS)
    assert killer.killed is not None
    new_pids = cluster.pids()
    assert killer.killed not in new_pids and len(new_pids) == 2  # the actor was restarted
    cluster.info["pids"] = new_pids
    head_a, rows_a = _table(tmp_path / "here.jsonl")
    head_b, rows_b = _table(tmp_path / "ray.jsonl")
    assert head_a == head_b
    keys = [(r["example"], r["method"]) for r in rows_b]
    assert len(keys) == len(set(keys)) == len(EXAMPLES) * 2  # none lost, none repeated
    assert keys == [(r["example"], r["method"]) for r in rows_a]  # in the same order
    for a, b in zip(rows_a, rows_b, strict=True):
        _same(a, b)
    assert len(here.rows) == len(there.rows)


def test_attribute_dataset_on_ray_equals_in_process(model, cluster, tmp_path):
    rows = [{"prompt": p, "target": t} for p, t in zip(PROMPTS, TARGETS, strict=True)]
    a = attribute_dataset(model, rows, method="integrated_gradients", params={"n_steps": 8}, batch_size=3)
    b = attribute_dataset(model, rows, method="integrated_gradients", params={"n_steps": 8}, batch_size=3,
                          out=tmp_path / "ray.parquet", executor=cluster)
    assert b.info["executor"] == "ray" and len(a) == len(b) == len(rows)
    for x, y in zip(a, b, strict=True):
        assert x.source_tokens == y.source_tokens
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5, atol=1e-6)


def test_facts_tracing_on_ray_equals_in_process(model, cluster, tmp_path):
    facts = [(p, p.split()[1], t) for p, t in zip(PROMPTS[:4], TARGETS[:4], strict=True)]
    kw = {"kinds": ["resid_post"], "n_samples": 2, "only_known": False, "progress": False}
    a = trace_facts(model, facts, **kw)
    b = trace_facts(model, facts, checkpoint=tmp_path / "ck.jsonl", executor=cluster, **kw)
    assert a.n == b.n == 4
    np.testing.assert_allclose(a.aie["resid_post"], b.aie["resid_post"], rtol=1e-5, atol=1e-6)
