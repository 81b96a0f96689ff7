"""Bad input for ``lmxray zoo train`` / ``lmxray zoo eval`` and the zoo API: each case fails with
one clear line (exit 2 on the command line) before any work, and no output is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from lmxray import zoo
from lmxray.errors import FormatError, InputError

FIX = Path(__file__).parent / "fixtures" / "evaluate"


def _file(name: str, data: bytes = b"x"):
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(data)

    return setup


CLI_CASES: list[
    CliCase("zoo-train-unknown-organism",
            ["zoo", "train", "--organism", "nope", "--out", "{tmp}/o"], "unknown organism",
            outputs=["{tmp}/o/config.json"]),CliCase] = [
    CliCase("zoo-eval-no-model", ["zoo", "eval", "--model", "{tmp}/none"], "no model at"),
    CliCase("zoo-eval-model-without-config", ["zoo", "eval", "--model", "{tmp}"], "no model at"),
    CliCase("zoo-eval-model-is-a-file", ["zoo", "eval", "--model", "{tmp}/m"], "no model at",
            setup=_file("m")),
    CliCase("zoo-eval-n-zero", ["zoo", "eval", "--n", "0"], "--n"),
    CliCase("zoo-eval-n-negative", ["zoo", "eval", "--n", "-5"], "--n"),
    CliCase("zoo-eval-verify-n-negative", ["zoo", "eval", "--verify-n", "-1"], "--verify-n"),
    CliCase("zoo-eval-verify-n-above-the-facts", ["zoo", "eval", "--verify-n", "100000"],
            "at most 2490"),
    CliCase("zoo-eval-json-is-a-folder", ["zoo", "eval", "--json", "{tmp}"], "is a directory"),
    CliCase("zoo-eval-json-folder-missing", ["zoo", "eval", "--json", "{tmp}/no/e.json"],
            "does not exist", outputs=["{tmp}/no/e.json"]),
    CliCase("zoo-eval-n-not-a-number", ["zoo", "eval", "--n", "many"], "--n"),
    CliCase("zoo-train-steps-zero", ["zoo", "train", "--steps", "0", "--out", "{tmp}/o"],
            "--steps", outputs=["{tmp}/o"]),
    CliCase("zoo-train-threads-zero", ["zoo", "train", "--threads", "0", "--out", "{tmp}/o"],
            "--threads", outputs=["{tmp}/o"]),
    CliCase("zoo-train-out-is-a-file", ["zoo", "train", "--steps", "1", "--out", "{tmp}/f"],
            "is a file", setup=_file("f")),
    CliCase("zoo-train-out-under-a-file",
            ["zoo", "train", "--steps", "1", "--out", "{tmp}/f/model"], "is a file",
            setup=_file("f")),
]


def _train(tmp: Path, out: Path, **kw):
    from lmxray.zoo.train import train

    return train(out, progress=False, **kw)


API_CASES: list[ApiCase] = [
    ApiCase("api-zoo-unknown-task", lambda tmp: zoo.generate("nope"), "unknown zoo task",
            InputError),
    ApiCase("api-zoo-bad-split", lambda tmp: zoo.generate("ioi", "shift"), "has no split",
            InputError),
    ApiCase("api-zoo-negative-n", lambda tmp: zoo.generate("ioi", n=-1), "n >= 0", InputError),
    ApiCase("api-zoo-no-negatives", lambda tmp: zoo.generate("facts", negatives=True),
            "has no negatives", InputError),
    ApiCase("api-zoo-unknown-model", lambda tmp: zoo.model_path("nope"), "no zoo model named",
            InputError),
    ApiCase("api-zoo-corpus-split", lambda tmp: zoo.corpus("shift"), "corpus split", InputError),
    ApiCase("api-zoo-load-folder-without-model", lambda tmp: zoo.verify.load(tmp), "no model at",
            InputError),
    ApiCase("api-zoo-dataset-unknown-task", lambda tmp: zoo.dataset("nope"), "unknown zoo task",
            InputError),
    ApiCase("api-zoo-eval-load-not-json",
            lambda tmp: zoo.ZooEvaluation.load(_put(tmp / "e.json", b"{no")), "not valid JSON",
            FormatError),
    ApiCase("api-zoo-eval-load-other-format",
            lambda tmp: zoo.ZooEvaluation.load(FIX / "old-leaderboard.json"),
            "zoo.eval file (found 'lmxray.leaderboard/1'", FormatError),
    ApiCase("api-zoo-eval-load-malformed",
            lambda tmp: zoo.ZooEvaluation.load(_put(tmp / "e.json", json.dumps(
                {"format": "lmxray.zoo.eval/1", "model": "m", "n": 1, "seed": 0,
                 "tasks": {"facts": {"value": 1}}}).encode())), "malformed", FormatError),
    ApiCase("api-zoo-eval-load-newer-version",
            lambda tmp: zoo.ZooEvaluation.load(_put(tmp / "e.json", b'{"format": "lmxray.zoo.eval/9"}')),
            "upgrade lmxray", FormatError),
    ApiCase("api-zoo-train-steps-zero", lambda tmp: _train(tmp, tmp / "o", steps=0),
            "steps must be positive", InputError),
    ApiCase("api-zoo-train-out-is-a-file",
            lambda tmp: _train(tmp, _put(tmp / "f", b"x"), steps=1), "is a file", InputError),
]


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
