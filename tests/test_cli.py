"""The ``lmxray`` command line on the tiny GPT-2 fixture: outputs, error contract, sub-apps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lmxray
from lmxray import cli
from lmxray.result import Attribution

runner = CliRunner()

FAST_IG = ["--n-steps", "4"]


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def assert_clean_error(result, outputs: list[Path] = ()):
    """Exit 2, exactly one stderr line, no traceback, no output file."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmxray: error: ")
    assert "Traceback" not in result.output
    for path in outputs:
        assert not path.exists(), path
        leftovers = (
            [p.name for p in path.parent.glob(f".{path.name}*")] if path.parent.exists() else []
        )
        assert leftovers == []


def test_methods_lists_the_registry():
    result = invoke("methods")
    assert result.exit_code == 0, result.output
    for name in lmxray.methods():
        assert name in result.stdout


def test_help_and_no_args():
    result = invoke("--help")
    assert result.exit_code == 0 and "explain" in result.stdout and "methods" in result.stdout
    result = invoke("explain", "--help")
    assert result.exit_code == 0 and "--max-new-tokens" in result.stdout
    result = invoke()
    assert result.exit_code == 2 and "explain" in result.stdout


def test_explain_writes_json_and_html(tiny_dir, tmp_path):
    js, page = tmp_path / "out.json", tmp_path / "out.html"
    result = invoke(
        "explain",
        "The capital of France is",
        "--target",
        " Paris",
        "--model",
        tiny_dir,
        "--json",
        js,
        "--html",
        page,
        *FAST_IG,
    )
    assert result.exit_code == 0, result.output
    assert "target ' Paris'" in result.stdout  # the forced answer
    assert "integrated_gradients" in result.stdout and "Σ" in result.stdout
    a = Attribution.load(js)
    assert "".join(a.target_tokens) == " Paris"
    assert a.method == "integrated_gradients" and a.info["target_fn"] == "logprob"
    assert a.scores.shape == (len(a.target_tokens), len(a.source_tokens))
    b = Attribution.load(js)  # round trip: save(load(x)) == x
    np.testing.assert_array_equal(np.isnan(a.scores), np.isnan(b.scores))
    assert a.to_json() == Attribution.from_dict(a.to_dict()).to_json()
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "lmx-report" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html", "out.json"]


def test_explain_generates_by_default(tiny_dir, tmp_path):
    js = tmp_path / "gen.json"
    result = invoke(
        "explain",
        "The capital of France is",
        "--model",
        tiny_dir,
        "--method",
        "saliency",
        "--json",
        js,
        "--max-new-tokens",
        "3",
        "--target-fn",
        "prob",
    )
    assert result.exit_code == 0, result.output
    assert "generated" in result.stdout
    a = Attribution.load(js)
    assert len(a.target_tokens) == 3 and a.info["generated"] is True
    assert a.info["target_fn"] == "prob"


def test_explain_default_is_five_new_tokens(tiny_dir):
    result = invoke("explain", "Berlin is in", "--model", tiny_dir, "--json", "-", *FAST_IG)
    assert result.exit_code == 0, result.output
    a = Attribution.from_dict(__import__("json").loads(result.stdout))
    assert len(a.target_tokens) == 5


def test_explain_contrastive(tiny_dir, tmp_path):
    js = tmp_path / "c.json"
    # " Rome" and " Lisbon" are one token each with the fixture tokenizer
    result = invoke(
        "explain",
        "The capital of Italy is",
        "--target",
        " Rome",
        "--foil",
        " Lisbon",
        "--model",
        tiny_dir,
        "--method",
        "input_x_gradient",
        "--json",
        js,
    )
    assert result.exit_code == 0, result.output
    assert "foil" in result.stdout
    assert Attribution.load(js).info["foil"] == " Lisbon"


@pytest.mark.parametrize(
    "case",
    [
        "empty prompt",
        "empty target",
        "unknown method",
        "missing model path",
        "missing output folder",
        "too long prompt",
        "target and max-new-tokens",
        "foil without target",
        "bad option value",
        "unknown option",
        "method parameter it does not take",
        "bad baseline",
    ],
)
def test_bad_input_is_one_line_exit_2_no_file(case, tiny_dir, tmp_path):
    js, page = tmp_path / "o.json", tmp_path / "o.html"
    prompt, extra = "The capital of France is", []
    model = str(tiny_dir)
    if case == "empty prompt":
        prompt = ""
    elif case == "empty target":
        extra = ["--target", ""]
    elif case == "unknown method":
        extra = ["--method", "no_such_method"]
    elif case == "missing model path":
        model = str(tmp_path / "no-model-here")
    elif case == "missing output folder":
        js = tmp_path / "missing" / "o.json"
    elif case == "too long prompt":
        prompt = "The capital of France is Paris. " * 60
        extra = ["--target", " Paris"]
    elif case == "target and max-new-tokens":
        extra = ["--target", " Paris", "--max-new-tokens", "2"]
    elif case == "foil without target":
        extra = ["--foil", " Rome"]
    elif case == "bad option value":
        extra = ["--n-steps", "0"]
    elif case == "unknown option":
        extra = ["--frobnicate"]
    elif case == "method parameter it does not take":
        extra = ["--method", "occlusion", "--n-steps", "3"]
    elif case == "bad baseline":
        extra = ["--baseline", "not-a-baseline", "--target", " Paris"]
    result = invoke("explain", prompt, "--model", model, "--json", js, "--html", page, *extra)
    assert_clean_error(result, [js, page])
    if case == "unknown method":
        assert "integrated_gradients" in result.stderr  # lists the valid ones


def test_output_folder_checked_before_model_load(tmp_path, monkeypatch):
    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(lmxray.model, "load", boom)
    result = invoke("explain", "hi", "--json", tmp_path / "nope" / "x.json")
    assert_clean_error(result)
    result = invoke("explain", "hi", "--html", tmp_path)  # a folder, not a file
    assert_clean_error(result)
    result = invoke("explain", "hi", "--method", "nope")
    assert_clean_error(result)


def test_default_model_missing_is_a_clean_error(monkeypatch):
    from lmxray.errors import ModelLoadError

    def no_default(*a, **k):
        raise ModelLoadError("the embedded default model is unavailable; pass --model")

    monkeypatch.setattr(lmxray.model, "load", no_default)
    assert_clean_error(invoke("explain", "hi", *FAST_IG))


@pytest.mark.slow
def test_real_process_error_contract(tmp_path):
    """The installed entry point itself: one line, exit 2, no traceback, no file."""
    src = Path(lmxray.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    js = tmp_path / "x.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmxray.cli",
            "explain",
            "hi",
            "--model",
            str(tmp_path / "none"),
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not js.exists()


# --------------------------------------------------------------------------- command groups
def test_every_command_group_is_mounted_once():
    import typer

    commands = typer.main.get_command(cli.app).commands  # type: ignore[attr-defined]
    for name in ("explain", "methods", "lens", "lens-train", "trace", "heads", "probe", "evaluate",
                 "shortcuts", "finetune", "steer", "edit", "amplify", "explain-endpoint",
                 "serve-completions", "zoo", "self-explain"):
        assert name in commands, name
    names = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------- shared helpers
def test_write_outputs_text_bytes_and_stdout(tmp_path, capsys):
    from rich.console import Console

    from lmxray.render.plots import heatmap_png

    err = Console(file=__import__("io").StringIO())
    png = cli.render_png(lambda f: heatmap_png([[1.0, -1.0]], ["r"], ["a", "b"], f))
    cli.write_outputs(
        [
            (tmp_path / "a.txt", lambda: "hello"),
            (tmp_path / "b.png", lambda: png),
            (None, lambda: 1 / 0),
        ],
        err,
    )
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.png"]


def test_write_outputs_renders_everything_before_writing(tmp_path):
    from rich.console import Console

    def broken() -> str:
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        cli.write_outputs(
            [(tmp_path / "first.json", lambda: "{}"), (tmp_path / "second.html", broken)],
            Console(file=__import__("io").StringIO()),
        )
    assert list(tmp_path.iterdir()) == []


def test_check_outputs(tmp_path):
    from lmxray.errors import InputError

    cli.check_outputs(tmp_path / "a.json", None, Path("-"))
    with pytest.raises(InputError, match="same file"):
        cli.check_outputs(tmp_path / "a.json", tmp_path / "." / "a.json")
    with pytest.raises(InputError, match="does not exist"):
        cli.check_outputs(tmp_path / "x" / "a.json")
    with pytest.raises(InputError, match="folder"):
        cli.check_outputs(tmp_path)
