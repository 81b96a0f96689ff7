"""Dataset jobs in process: the executor protocol (units mapped in order give the same rows as
the plain loop), attribution over a dataset to JSONL / Parquet with resume, the CLI command, and
that neither ``import lmxray`` nor the CLI imports Ray. (Ray itself: tests/test_jobs_ray.py.)"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lmxray
from conftest import build_tiny
from lmxray import cli
from lmxray.evaluate import evaluate
from lmxray.internals.tracing import trace_facts
from lmxray.jobs import InProcess, attribute_dataset, read_attributions

EXAMPLES = [
    {"id": "fr", "prompt": "The capital of France is", "target": " Paris", "rationale": ["France"]},
    {"id": "it", "prompt": "The capital of Italy is", "target": " Rome", "rationale": ["Italy"]},
    {"id": "ioi", "prompt": "When Mary and John went to the store, John gave a drink to", "target": " Mary",
     "rationale": ["Mary"]},
]
ROWS = [{"prompt": e["prompt"], "target": e["target"], "id": e["id"]} for e in EXAMPLES]


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


class OutOfOrder:
    """Runs the units on threads, the last first, and yields them in order (as Ray does)."""

    def __init__(self, model):
        self.model, self.info, self.calls = model, {"executor": "threads"}, 0

    def map(self, fn, units):
        units = list(units)
        self.calls += len(units)
        with ThreadPoolExecutor(1) as pool:
            futures = [pool.submit(fn, self.model, u) for u in reversed(units)][::-1]
            for f in futures:
                yield f.result()


def _same_rows(gpt2, tmp_path, **kw):
    a = evaluate(gpt2, EXAMPLES, out=tmp_path / "a.jsonl", **kw)
    ex = OutOfOrder(gpt2)
    b = evaluate(gpt2, EXAMPLES, out=tmp_path / "b.jsonl", executor=ex, **kw)
    strip = [{k: v for k, v in r.items() if k != "attribution_seconds"} for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k != "attribution_seconds"} for r in b.rows]
    assert a.sanity == b.sanity
    again = OutOfOrder(gpt2)
    evaluate(gpt2, EXAMPLES, out=tmp_path / "b.jsonl", executor=again, **kw)
    assert again.calls == 0  # resumed: every row was already in the file
    return b, ex


def test_evaluate_through_an_executor_gives_the_same_rows(gpt2, tmp_path):
    b, ex = _same_rows(gpt2, tmp_path, methods=["saliency", "random"], metrics=["plausibility"], batch_size=2,
                       progress=False)
    assert ex.calls == 2  # two chunks of examples
    assert [(r["example"], r["method"]) for r in b.rows] == [
        ("fr", "saliency"), ("it", "saliency"), ("fr", "random"), ("it", "random"),
        ("ioi", "saliency"), ("ioi", "random")]


@pytest.mark.slow
def test_evaluate_with_faithfulness_and_sanity_through_an_executor(gpt2, tmp_path):
    b, ex = _same_rows(gpt2, tmp_path, methods=["occlusion", "random"], metrics=["faithfulness", "sanity"],
                       n_steps=3, bins=(50,), batch_size=2, sanity_examples=1, progress=False)
    assert ex.calls == 2 + 2  # two chunks of examples, one sanity unit per method
    assert [s["method"] for s in b.sanity] == ["occlusion", "random"]


@pytest.mark.slow
def test_trace_facts_through_an_executor(gpt2):
    facts = [(e["prompt"], e["prompt"].split()[-2], e["target"]) for e in EXAMPLES[:2]]
    kw = {"kinds": ["resid_post"], "n_samples": 2, "only_known": False, "progress": False}
    a = trace_facts(gpt2, facts, **kw)
    b = trace_facts(gpt2, facts, executor=InProcess(gpt2), **kw)
    np.testing.assert_array_equal(a.aie["resid_post"], b.aie["resid_post"])


def test_attribute_dataset_jsonl_resumes_without_loss_or_repeat(gpt2, tmp_path):
    out = tmp_path / "a.jsonl"
    full = attribute_dataset(gpt2, ROWS, method="saliency", out=out, batch_size=2)
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + len(ROWS) and json.loads(lines[0])["format"] == "lmxray.attribution-rows/1"
    # an interrupted run: the last row half written
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    again = attribute_dataset(gpt2, ROWS, method="saliency", out=out, batch_size=2)
    assert again.info["resumed_rows"] == 2
    idx = [json.loads(x)["index"] for x in out.read_text().splitlines()[1:]]
    assert idx == [0, 1, 2]
    for x, y, z in zip(full, again, read_attributions(out), strict=True):
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.scores, z.scores)
    with pytest.raises(lmxray.InputError, match="another run"):
        attribute_dataset(gpt2, ROWS, method="occlusion", out=out)


def test_attribute_dataset_parquet(gpt2, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "a.parquet"
    res = attribute_dataset(gpt2, ROWS + [{"prompt": "The quick brown fox"}], method="occlusion", out=out)
    assert not Path(f"{out}.partial.jsonl").exists()
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["fr", "it", "ioi", "3"]
    assert table.column("target").to_pylist()[3] is None  # generated, explained
    scores = table.column("scores").to_pylist()
    np.testing.assert_allclose(np.array(scores[0], dtype=np.float32), res[0].scores, equal_nan=True)
    assert json.loads(table.schema.metadata[b"lmxray"])["config"]["method"] == "occlusion"
    assert [a.target_tokens for a in read_attributions(out)] == [a.target_tokens for a in res]


def test_cli_attribute_dataset(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = CliRunner().invoke(cli.app, ["attribute-dataset", str(data), "--out", str(tmp_path / "o.parquet"),
                                       "--method", "saliency", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "3 attributions in" in res.stderr
    assert len(read_attributions(tmp_path / "o.parquet")) == 3


def test_ray_is_imported_only_when_asked_for():
    code = "import sys, lmxray, lmxray.cli; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    src = Path(lmxray.__file__).parent
    for path in [*(src / "jobs").glob("*.py"), src / "cli" / "jobs.py"]:
        top = ast.parse(path.read_text()).body
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(n == "ray" or n.startswith("ray.") for n in names), path
