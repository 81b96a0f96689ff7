"""The benchmark runner: rows agree with the metric functions, streaming + resume (including a
real SIGINT to a subprocess), leaderboard outputs, data loading and bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.evaluate import evaluate, evidence_recovery, faithfulness, load_examples, plausibility
from lmxray.evaluate.data import to_examples

EXAMPLES = [
    {"id": "fr", "prompt": "The capital of France is", "target": " Paris",
     "rationale": ["France"], "evidence": ["France"]},
    {"id": "it", "prompt": "The capital of Italy is", "target": " Rome",
     "rationale": [[15, 20]], "evidence": [4]},
    {"id": "ioi", "prompt": "When Mary and John went to the store, John gave a drink to",
     "target": " Mary", "rationale": ["Mary"], "evidence": ["Mary"]},
    {"id": "kv", "prompt": "k3=blue k7=red k1", "target": "=green", "evidence": ["k1"]},
]
FAST = {"n_steps": 4, "bins": (10, 50)}


@pytest.fixture(scope="module")
def gpt2():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


def test_rows_agree_with_the_metric_functions(gpt2):
    ev = evaluate(gpt2, EXAMPLES, methods=["occlusion", "random"], progress=False, batch_size=3,
                  **FAST)
    df = ev.to_dataframe()
    assert len(df) == 8 and not df.duplicated(["example", "method"]).any()
    board = ev.leaderboard()
    assert list(board.index) == ["occlusion", "random"]
    assert {"comprehensiveness", "token_f1", "mrr", "n_verified", "deletion_auc"} <= set(board.columns)
    # one row recomputed by hand through the public functions
    ex = to_examples(gpt2, EXAMPLES)[2]
    a = gpt2.attribute(ex.prompt, target=ex.target, method="occlusion")
    row = df[(df.example == "ioi") & (df.method == "occlusion")].iloc[0]
    f = faithfulness(gpt2, a, n_steps=4, bins=(10, 50)).summary()
    for k in ("comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "log_odds"):
        assert row[k] == pytest.approx(f[k], rel=1e-5, abs=1e-7), k
    assert row["token_f1"] == pytest.approx(plausibility(a, ex.rationale, model=gpt2)["token_f1"])
    assert row["mrr"] == pytest.approx(evidence_recovery(a, ex.evidence, model=gpt2)["mrr"])
    # rationale forms: text, char span and index resolve to the same token
    exs = to_examples(gpt2, EXAMPLES)
    assert exs[0].rationale == exs[0].evidence == [4]
    assert exs[1].rationale == exs[1].evidence == [4]
    # ground truth counts verified examples only; a random tiny model verifies few or none
    assert board.loc["occlusion", "n_verified"] == int(df[df.method == "occlusion"].verified.sum())
    curves = ev.curves("deletion")
    assert set(curves) == {"occlusion", "random"} and curves["random"].shape == (5,)


def test_resume_in_process_and_torn_line(gpt2, tmp_path):
    out = tmp_path / "r.jsonl"
    kw = dict(methods=["saliency", "random"], metrics=["comprehensiveness", "groundtruth"],
              progress=False, batch_size=2, out=out, **FAST)
    full = evaluate(gpt2, EXAMPLES, **kw)
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 9
    # simulate a crash: keep 3 rows and half of the 4th
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])
    again = evaluate(gpt2, EXAMPLES, **kw)
    rows = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    keys = [(r["example"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8
    a, b = (x.leaderboard().drop(columns="attribution_seconds") for x in (full, again))
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-5, atol=1e-8,
                               equal_nan=True)
    loaded = lmxray.evaluate.Evaluation.load(out)
    assert loaded.config == again.config and len(loaded.rows) == 8
    # nothing left to do: the file is unchanged by a third run
    before = out.read_text()
    evaluate(gpt2, EXAMPLES, **kw)
    assert out.read_text() == before
    with pytest.raises(InputError, match="another configuration.*methods"):
        evaluate(gpt2, EXAMPLES, **{**kw, "methods": ["saliency"]})
    fresh = evaluate(gpt2, EXAMPLES[:1], **{**kw, "resume": False})
    assert len(fresh.rows) == 2
    (tmp_path / "other.jsonl").write_text('{"kind": "row"}\n')
    with pytest.raises(InputError, match="not an lmxray evaluate results file"):
        evaluate(gpt2, EXAMPLES, **{**kw, "out": tmp_path / "other.jsonl"})


@pytest.mark.slow
def test_report_outputs(gpt2, tmp_path):
    ev = evaluate(gpt2, EXAMPLES[:2], methods=["occlusion", "random"],
                  metrics=["faithfulness", "sanity"], progress=False, sanity_examples=2, **FAST)
    assert {s["method"] for s in ev.sanity} == {"occlusion", "random"}
    rnd = next(s for s in ev.sanity if s["method"] == "random")
    assert rnd["passed"] is False and rnd["final"] == pytest.approx(1.0)
    board = ev.leaderboard()
    assert board.loc["random", "sanity_rho"] == pytest.approx(1.0)
    csv = ev.to_csv(tmp_path / "b.csv")
    assert csv.splitlines()[0].startswith("method,n,") and (tmp_path / "b.csv").read_text() == csv
    ev.config["data"] = "<script>alert(1)</script>"
    html = ev.to_html(tmp_path / "b.html")
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "data:image/png;base64," in html and "Sanity check" in html
    ev.to_png(tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(ev.to_json())
    assert data["format"] == "lmxray.leaderboard/1" and "occlusion" in data["leaderboard"]
    from rich.console import Console

    con = Console(record=True, width=200)
    ev.show(con)
    text = con.export_text()
    assert "comprehensiveness" in text and "occlusion" in text
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pyarrow"):
            ev.to_parquet(tmp_path / "rows.parquet")


def test_data_loading(gpt2, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n\n")
    exs, name = load_examples(gpt2, path, n=3)
    assert name == "d" and [e.id for e in exs] == ["fr", "it", "ioi"]
    zoo, zname = load_examples(gpt2, "ioi", n=3)
    assert zname == "ioi" and len(zoo) == 3 and all(e.evidence for e in zoo)
    bad = [
        ([{"prompt": "x"}], "no 'target'"),
        ([{"target": "x"}], "no 'prompt'"),
        ([{"prompt": "abc", "target": "d", "rationale": ["zzz"]}], "does not occur"),
        ([{"prompt": "abc", "target": "d", "evidence": [99]}], "outside the prompt"),
        ([{"prompt": "abc", "target": "d", "rationale": [[0, 99]]}], "outside the prompt"),
        ([{"id": 1, "prompt": "a", "target": "b"}, {"id": 1, "prompt": "a", "target": "b"}], "twice"),
    ]
    for items, match in bad:
        with pytest.raises(InputError, match=match):
            to_examples(gpt2, items)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"\n')
    with pytest.raises(InputError, match="broken.jsonl line 1 is not JSON"):
        load_examples(gpt2, tmp_path / "broken.jsonl")
    with pytest.raises(InputError, match="neither a file"):
        load_examples(gpt2, "no-such-task")
    folder = tmp_path / "ds"
    try:
        import datasets
    except ImportError:
        folder.mkdir()
        with pytest.raises(InputError, match="needs the 'datasets' package"):
            load_examples(gpt2, folder)
    else:
        # an Arrow table needs one type per column: two rows whose marks are all words
        rows = [EXAMPLES[0], EXAMPLES[2]]
        datasets.Dataset.from_list(rows).save_to_disk(str(folder))
        exs, _ = load_examples(gpt2, folder)
        assert [e.prompt for e in exs] == [e["prompt"] for e in rows]
        assert [e.target for e in exs] == [e["target"] for e in rows]
        assert all(e.rationale for e in exs)  # the word marks became token positions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": ["nope"]}, "unknown method"),
        ({"methods": []}, "no method"),
        ({"metrics": ["accuracy"]}, "unknown metric"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(gpt2, kwargs, match):
    with pytest.raises(InputError, match=match):
        evaluate(gpt2, EXAMPLES[:1], progress=False, **kwargs)


# ----------------------------------------------------------------------------- CLI + SIGINT
def _cli(args, cwd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # SIGINT at its default, even if this test runs in a background job that ignores it
    return subprocess.Popen([sys.executable, "-m", "lmxray", "evaluate", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kw)


def test_cli_bad_input_exits_2_with_one_line(tiny_dir, tmp_path, capfd):
    from lmxray.cli import app

    command = __import__("typer").main.get_command(app)
    for args, match in [
        ([], "give the data"),
        (["ioi", "--task", "ioi"], "not both"),
        (["ioi", "--methods", "nope", "--model", str(tiny_dir), "--out", str(tmp_path / "x.jsonl")],
         "unknown method"),
        (["ioi", "--out", str(tmp_path / "no" / "r.jsonl")], "does not exist"),
        (["ioi", "--removal", "mask"], "--removal"),
        (["nonesuch"], "neither a file"),
    ]:
        with pytest.raises(SystemExit) as exc:
            command.main(args=["evaluate", *args], prog_name="lmxray")
        err = capfd.readouterr().err
        assert exc.value.code == 2, err
        assert err.count("\n") == 1 and match in err, err


@pytest.mark.slow
def test_cli_writes_every_output(tiny_dir, tmp_path, capfd):
    from lmxray.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES[:2]))
    command = __import__("typer").main.get_command(app)
    outs = {k: tmp_path / f"lb.{k}" for k in ("csv", "html", "png", "json")}
    args = ["evaluate", str(data), "--model", str(tiny_dir), "--methods", "random,saliency",
            "--metrics", "comprehensiveness,deletion", "--curve-steps", "4", "--no-progress",
            "--out", str(tmp_path / "rows.jsonl")]
    for k, p in outs.items():
        args += [f"--{k}", str(p)]
    with pytest.raises(SystemExit) as exc:
        command.main(args=args, prog_name="lmxray")
    captured = capfd.readouterr()
    assert exc.value.code == 0, captured.err
    assert "saliency" in captured.out and "comprehensiveness" in captured.out
    assert all(p.exists() for p in outs.values())
    assert json.loads(outs["json"].read_text())["config"]["data"] == "d"


@pytest.mark.slow
def test_sigint_halfway_then_resume_gives_the_uninterrupted_table(tiny_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [dict(e, id=f"{e['id']}{i}") for i in range(6) for e in EXAMPLES]  # 24 examples
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [str(data), "--model", str(tiny_dir), "--methods", "occlusion,random",
              "--metrics", "faithfulness,groundtruth", "--batch-size", "2", "--curve-steps", "5",
              "--no-progress"]

    # uninterrupted reference
    ref = _cli([*common, "--out", "ref.jsonl", "--csv", "ref.csv"], tmp_path)
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err

    run = _cli([*common, "--out", "r.jsonl", "--csv", "r.csv"], tmp_path)
    results = tmp_path / "r.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 9:  # header + 8 rows
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err  # the CLI's exit code for an interrupted command
    print("stderr after SIGINT:", repr(err))
    assert err.strip().splitlines()[-1].startswith("lmxray: interrupted; rerun the same command to resume")
    partial = [json.loads(x) for x in results.read_text().splitlines()[1:] if x.strip()]
    assert 8 <= len(partial) < 48, len(partial)  # stopped halfway
    assert not (tmp_path / "r.csv").exists()  # no output before the run completes

    again = _cli([*common, "--out", "r.jsonl", "--csv", "r.csv"], tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    final = [json.loads(x) for x in results.read_text().splitlines()[1:]]
    keys = [(r["example"], r["method"]) for r in final]
    assert len(keys) == len(set(keys)) == 48  # no duplicate, no lost row
    import pandas as pd

    a = pd.read_csv(tmp_path / "ref.csv", index_col=0)
    b = pd.read_csv(tmp_path / "r.csv", index_col=0)
    assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
    for col in a.columns.drop("attribution_seconds"):  # timings differ, metrics must not
        for x, y in zip(a[col], b[col], strict=True):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-5, abs=1e-8), col


def test_metric_lists_and_callable_package(gpt2):
    import lmxray.evaluate as package
    from lmxray.evaluate.runner import METRIC_GROUPS, _resolve_metrics

    assert _resolve_metrics("all,sanity") == (set(METRIC_GROUPS), None)
    assert _resolve_metrics("all") == (set(METRIC_GROUPS), None)  # 'all' includes sanity
    assert _resolve_metrics(None) == (set(METRIC_GROUPS) - {"sanity"}, None)
    assert _resolve_metrics("deletion,groundtruth") == ({"faithfulness", "groundtruth"}, ["deletion"])
    ev = package(gpt2, EXAMPLES[:1], methods="random", metrics="deletion", progress=False, n_steps=2)
    assert list(ev.leaderboard().index) == ["random"] and "deletion_auc" in ev.leaderboard()
    assert "comprehensiveness" not in ev.leaderboard()
