"""The improve CLI commands (shortcuts, finetune, steer, edit, amplify) on tiny fixtures: outputs
written only after success, JSON formats, saved models, and the one-line exit-2 error contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import lmxray
from lmxray import cli
from lmxray.cli.improve import register

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _app() -> typer.Typer:
    app = typer.Typer(cls=cli.LmxrayGroup, pretty_exceptions_enable=False, add_completion=False)

    @app.command()
    def version() -> None:  # a second command keeps typer in multi-command mode
        pass

    register(app)
    return app


APP = _app()


def invoke(*args: object):
    return runner.invoke(APP, [str(a) for a in args])


def ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)


def assert_clean_error(result, outputs=()):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmxray: error: "), result.stderr
    assert "Traceback" not in result.output
    for p in outputs:
        assert not Path(p).exists()


@pytest.fixture(scope="module")
def tiny_long_dir(tmp_path_factory) -> Path:
    """The tiny Llama with a 512-token context (zoo reviews in the tiny tokenizer exceed 64)."""
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", len(tok))
    cfg.max_position_embeddings = 512
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    out = tmp_path_factory.mktemp("tiny-long")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {
        "prompt": f"The {w} of France is",
        "target": " Paris" if i % 2 else " Rome",
        "rationale": [w],
        "irrelevant": ["France"],
    }
    for i, w in enumerate(["capital", "fox", "dog", "store"] * 3)
]


@pytest.mark.slow
def test_shortcuts_on_a_jsonl_file(tiny_llama_dir, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    r = invoke(
        "shortcuts",
        data,
        "--model",
        tiny_llama_dir,
        "--min-count",
        2,
        "--json",
        out,
        "--png",
        png,
        "--no-progress",
    )
    ok(r)
    assert "shortcut candidates" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "lmxray.shortcuts/1" and doc["n_examples"] == len(ROWS)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_shortcuts_zoo_demo_and_errors(tiny_long_dir, tmp_path):
    r = invoke("shortcuts", "--model", tiny_long_dir, "--n", 30, "--min-count", 3, "--no-progress")
    ok(r)
    assert "planted shortcut" in r.stdout
    out = tmp_path / "x.json"
    assert_clean_error(
        invoke("shortcuts", "--model", tiny_long_dir, "--method", "nope", "--json", out), [out]
    )
    assert_clean_error(invoke("shortcuts", tmp_path / "missing.jsonl", "--model", tiny_long_dir))
    assert_clean_error(invoke("shortcuts", "--task", "ioi", "--model", tiny_long_dir))
    assert_clean_error(
        invoke("shortcuts", "--model", tiny_long_dir, "--json", tmp_path / "no" / "x.json")
    )


def test_finetune_jsonl_saves_a_loadable_model(tiny_llama_dir, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    out_dir, js = tmp_path / "ft", tmp_path / "ft.json"
    r = invoke(
        "finetune",
        data,
        "--model",
        tiny_llama_dir,
        "--out",
        out_dir,
        "--steps",
        3,
        "--batch-size",
        4,
        "--lam",
        1.0,
        "--json",
        js,
        "--no-progress",
    )
    ok(r)
    assert "saved to" in r.stdout
    m = lmxray.load(str(out_dir))
    assert m.n_layers == 2
    doc = json.loads(js.read_text())
    assert (
        doc["format"] == "lmxray.finetune/1"
        and doc["config"]["steps"] == 3
        and doc["n_marked"] == len(ROWS)
    )
    assert_clean_error(invoke("finetune", data, "--model", tiny_llama_dir))  # no --out
    assert_clean_error(
        invoke(
            "finetune", data, "--model", tiny_llama_dir, "--out", out_dir, "--penalise", "detect"
        )
    )
    plain = _jsonl(
        tmp_path / "p.jsonl", [{k: v for k, v in r_.items() if k != "irrelevant"} for r_ in ROWS]
    )
    assert_clean_error(
        invoke(
            "finetune",
            plain,
            "--model",
            tiny_llama_dir,
            "--out",
            tmp_path / "p2",
            "--steps",
            1,
            "--no-progress",
        )
    )  # nothing marked, lam > 0


def test_finetune_ctrl_c_says_how_to_resume_and_resumes(tiny_llama_dir, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a step: the step completes, a checkpoint is written, the command
    exits 130 with "interrupted; rerun the same command to resume"; rerunning finishes the run
    from the checkpoint with the weights of an uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file

    from lmxray.improve import regularise

    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    args = ["finetune", data, "--model", tiny_llama_dir, "--steps", 5, "--batch-size", 4,
            "--lam", 1.0, "--no-progress"]
    ok(invoke(*args, "--out", tmp_path / "whole"))
    step = regularise._Steps.__call__

    def interrupted_at_2(self, i):
        if i == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, i)

    monkeypatch.setattr(regularise._Steps, "__call__", interrupted_at_2)
    r = invoke(*args, "--out", tmp_path / "run")
    assert r.exit_code == 130, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted; rerun the same command to resume" in lines[0]
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and not (tmp_path / "run" / "model.safetensors").exists()
    monkeypatch.setattr(regularise._Steps, "__call__", step)
    ok(invoke(*args, "--out", tmp_path / "run", "--json", tmp_path / "run.json"))
    assert json.loads((tmp_path / "run.json").read_text())["info"]["resumed_from"] == 3
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.slow
def test_finetune_zoo_demo_prints_the_table(tiny_long_dir, tmp_path):
    out_dir, js = tmp_path / "demo", tmp_path / "demo.json"
    r = invoke(
        "finetune",
        "--model",
        tiny_long_dir,
        "--out",
        out_dir,
        "--steps",
        2,
        "--batch-size",
        4,
        "--n-train",
        40,
        "--n-eval",
        10,
        "--json",
        js,
        "--no-progress",
    )
    ok(r)
    assert "plain fine-tune" in r.stdout and "RRR" in r.stdout and "shift conflict" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["format"] == "lmxray.rrr/1" and set(doc["rows"]) == {
        "base",
        "plain fine-tune",
        "RRR (lambda=30)",
    }
    assert (out_dir / "rrr" / "config.json").exists() and (
        out_dir / "plain" / "finetune.json"
    ).exists()
    assert_clean_error(invoke("finetune", "--model", tiny_long_dir, "--penalise", "none"))
    bad = invoke("finetune", "--model", tiny_long_dir, "--annotation", "gold", "--out",
                 tmp_path / "never")
    assert_clean_error(bad)
    assert "annotation must be one of zoo, decoy, relabel" in bad.stderr
    assert not (tmp_path / "never").exists()
    # penalising words (not the annotation) keeps the biased annotation and marks the words
    js2 = tmp_path / "words.json"
    r = invoke(
        "finetune",
        "--model",
        tiny_long_dir,
        "--penalise",
        "Tuesday",
        "--steps",
        1,
        "--batch-size",
        4,
        "--n-train",
        40,
        "--n-eval",
        10,
        "--no-compare",
        "--json",
        js2,
        "--no-progress",
    )
    ok(r)
    doc = json.loads(js2.read_text())
    assert doc["penalised"] == ["Tuesday"] and doc["info"]["annotation"] == "zoo"
    assert set(doc["rows"]) == {"base", "RRR (lambda=30)"}


@pytest.mark.slow
def test_edit_one_fact_and_errors(tiny_llama_dir, tmp_path):
    out_dir, js = tmp_path / "edited", tmp_path / "e.json"
    r = invoke(
        "edit",
        "The capital of France is",
        "--subject",
        "France",
        "--target",
        " Rome",
        "--layer",
        0,
        "--model",
        tiny_llama_dir,
        "--out",
        out_dir,
        "--json",
        js,
    )
    ok(r)
    assert "layer 0" in r.stdout
    assert (out_dir / "config.json").exists()
    doc = json.loads(js.read_text())
    assert doc["format"] == "lmxray.edit/1" and doc["layer"] == 0
    assert_clean_error(
        invoke(
            "edit",
            "The capital of France is",
            "--subject",
            "Spain",
            "--target",
            " Rome",
            "--model",
            tiny_llama_dir,
        )
    )
    assert_clean_error(invoke("edit", "--model", tiny_llama_dir))
    assert_clean_error(invoke("edit", "The capital of France is", "--model", tiny_llama_dir))
    assert_clean_error(
        invoke("edit", "--facts", 3, "--layer", 0, "--model", tiny_llama_dir, "--no-progress")
    )


def test_steer_errors_are_one_line(tiny_long_dir, tmp_path):
    png = tmp_path / "s.png"
    assert_clean_error(
        invoke("steer", "--to", "neutral", "--model", tiny_long_dir, "--png", png), [png]
    )
    assert_clean_error(invoke("steer", "--coefs", "a,b", "--model", tiny_long_dir))
    # a random model answers neither label: nothing to flip
    assert_clean_error(
        invoke(
            "steer",
            "--model",
            tiny_long_dir,
            "--n-vector",
            8,
            "--n-eval",
            8,
            "--n-fluency",
            2,
            "--no-progress",
            "--png",
            png,
        ),
        [png],
    )


def test_amplify_runs_and_reports_every_condition(tiny_long_dir, tmp_path):
    js = tmp_path / "a.json"
    r = invoke(
        "amplify",
        "shift",
        "--model",
        tiny_long_dir,
        "--n-pool",
        6,
        "--n-queries",
        4,
        "--shots",
        2,
        "--k",
        2,
        "--json",
        js,
        "--no-progress",
    )
    ok(r)
    for c in ("zero-shot", "no rationale", "random rationale", "amplify"):
        assert c in r.stdout
    doc = json.loads(js.read_text())
    assert doc["format"] == "lmxray.amplify/1" and len(doc["demos"]) == 2
    assert_clean_error(invoke("amplify", "dev", "--model", tiny_long_dir))
    assert_clean_error(invoke("amplify", "--method", "nope", "--model", tiny_long_dir))


@pytest.mark.slow
def test_edit_memit_batch_saves_model_and_json(tiny_long_dir, tmp_path):
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        '{"prompt": "The capital of France is", "subject": "France", "target": " Rome"}\n'
        '{"prompt": "Berlin is in", "subject": "Berlin", "target": "Spain"}\n'
    )
    out_dir, js = tmp_path / "edited", tmp_path / "b.json"
    r = invoke("edit", "--method", "memit", "--batch", batch, "--layer", 0, "--model",
               tiny_long_dir, "--out", out_dir, "--json", js, "--preserve-weight", 5)
    ok(r)
    assert "MEMIT batch of 2 edits at layers [0]" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["format"] == "lmxray.edit-batch/1" and doc["layers"] == [0]
    assert doc["info"]["preserve_weight"] == 5.0  # the zoo's other subjects were held
    assert [x["target"] for x in doc["rows"]] == [" Rome", " Spain"]
    assert (out_dir / "config.json").exists()
    # the saved model carries the update: its down projection differs from the original
    from safetensors.torch import load_file

    a = load_file(str(out_dir / "model.safetensors"))
    b = load_file(str(Path(tiny_long_dir) / "model.safetensors"))
    key = next(k for k in a if "layers.0.mlp.down_proj" in k)
    assert not torch.equal(a[key], b[key])


@pytest.mark.slow  # trains the students' tokenizer and 4 tiny students
def test_distill_prints_the_curve_and_writes_json(tmp_path):
    js = tmp_path / "d.json"
    r = invoke("distill", "--fractions", "0.5,1", "--seeds", "0", "--n-train", 10, "--n-test",
               4, "--steps", 2, "--json", js, "--no-progress")
    ok(r)
    assert "Rationale distillation" in r.stdout and "label + rationale" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["format"] == "lmxray.distill/1" and doc["fractions"] == [0.5, 1.0]
    assert len(doc["accuracy"]["label only"]) == 2
