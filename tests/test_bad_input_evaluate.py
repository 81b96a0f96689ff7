"""Bad input for ``lmxray evaluate`` and the evaluation API (``lmxray.evaluate``): each case
fails with one clear line (exit 2 on the command line), and no output is left behind."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

from badinput import ApiCase, CliCase, embedded_model, run_api_case, run_cli_case
from lmxray.errors import FormatError, InputError

OK = {"prompt": "The capital of France is", "target": " Paris", "rationale": ["France"]}
FIX = Path(__file__).parent / "fixtures" / "evaluate"


def _jsonl(name: str, *rows, raw: bytes | None = None):
    """A setup that writes ``{tmp}/name`` from rows (dicts or text lines) or raw bytes."""

    def setup(tmp: Path) -> None:
        data = raw if raw is not None else "".join(
            (json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows).encode()
        (tmp / name).write_bytes(data)

    return setup


def _ev(*args: str, data: str = "{tmp}/d.jsonl") -> list[str]:
    return ["evaluate", data, "--out", "{tmp}/rows.jsonl", "--no-progress", *args]


ROWS = ["{tmp}/rows.jsonl"]
NOT_UTF8 = json.dumps(OK).encode() + b"\n" + b'{"prompt": "caf\xe9 is", "target": " x"}\n'

CLI_CASES: list[CliCase] = [
    CliCase("evaluate-no-data", ["evaluate", "--out", "{tmp}/rows.jsonl"], "give the data",
            outputs=ROWS),
    CliCase("evaluate-data-and-task", ["evaluate", "ioi", "--task", "ioi"], "not both"),
    CliCase("evaluate-unknown-source", _ev(data="nonesuch"), "neither a file", outputs=ROWS),
    CliCase("evaluate-bad-removal", _ev("--removal", "mask", data="ioi"), "--removal",
            outputs=ROWS),
    CliCase("evaluate-out-folder-missing",
            ["evaluate", "ioi", "--out", "{tmp}/no/rows.jsonl"], "does not exist",
            outputs=["{tmp}/no/rows.jsonl"]),
    CliCase("evaluate-out-is-a-folder", ["evaluate", "ioi", "--out", "{tmp}"], "is a directory"),
    CliCase("evaluate-csv-folder-missing", _ev("--csv", "{tmp}/no/b.csv", data="ioi"),
            "does not exist", outputs=ROWS),
    CliCase("evaluate-json-is-the-out-file", _ev("--json", "{tmp}/rows.jsonl", data="ioi"),
            "same file", outputs=ROWS),
    CliCase("evaluate-html-png-clash", _ev("--html", "{tmp}/a", "--png", "{tmp}/a", data="ioi"),
            "same file", outputs=[*ROWS, "{tmp}/a"]),
    CliCase("evaluate-jsonl-not-utf8", _ev(), "d.jsonl line 2 is not UTF-8", outputs=ROWS,
            setup=_jsonl("d.jsonl", raw=NOT_UTF8)),
    CliCase("evaluate-jsonl-not-json", _ev(), "d.jsonl line 2 is not JSON", outputs=ROWS,
            setup=_jsonl("d.jsonl", OK, '{"prompt": "a"')),
    CliCase("evaluate-jsonl-not-object", _ev(), "line 1 is not a JSON object", outputs=ROWS,
            setup=_jsonl("d.jsonl", "[1, 2]")),
    CliCase("evaluate-jsonl-empty", _ev(), "holds no", outputs=ROWS,
            setup=_jsonl("d.jsonl", raw=b"\n\n")),
    CliCase("evaluate-jsonl-no-target", _ev(), "no 'target'", outputs=ROWS,
            setup=_jsonl("d.jsonl", {"prompt": "The capital of France is"})),
    CliCase("evaluate-jsonl-empty-prompt", _ev(), "no 'prompt'", outputs=ROWS,
            setup=_jsonl("d.jsonl", {"prompt": "  ", "target": " x"})),
    CliCase("evaluate-jsonl-word-not-in-prompt", _ev(), "'Spain' does not occur", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "rationale": ["Spain"]})),
    CliCase("evaluate-jsonl-position-out-of-range", _ev(), "position 99 is outside", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "evidence": [99]})),
    CliCase("evaluate-jsonl-span-out-of-range", _ev(), "outside the prompt", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "rationale": [[0, 999]]})),
    CliCase("evaluate-jsonl-bad-mark", _ev(), "cannot read the rationale mark", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "rationale": [{"a": 1}]})),
    CliCase("evaluate-jsonl-duplicate-id", _ev(), "occurs twice", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "id": "a"}, {**OK, "id": "a"})),
    CliCase("evaluate-n-above-the-facts", _ev("--n", "100000", data="facts"),
            "at most 2490", outputs=ROWS),
    CliCase("evaluate-n-above-the-file", _ev("--n", "5"), "at most 2", outputs=ROWS,
            setup=_jsonl("d.jsonl", {**OK, "id": "a"}, {**OK, "id": "b"})),
    CliCase("evaluate-n-zero", _ev("--n", "0", data="ioi"), "--n", outputs=ROWS),
    CliCase("evaluate-unknown-method", _ev("--methods", "nope", data="ioi"), "unknown method",
            outputs=ROWS),
    CliCase("evaluate-empty-methods", _ev("--methods", ",", data="ioi"), "no method chosen",
            outputs=ROWS),
    CliCase("evaluate-unknown-metric", _ev("--metrics", "accuracy", data="ioi"), "unknown metric",
            outputs=ROWS),
    CliCase("evaluate-empty-metrics", _ev("--metrics", ",", data="ioi"), "no metric chosen",
            outputs=ROWS),
    CliCase("evaluate-bad-split", _ev("--split", "shift", data="ioi"), "has no split",
            outputs=ROWS),
    CliCase("evaluate-batch-size-zero", _ev("--batch-size", "0", data="ioi"), "--batch-size",
            outputs=ROWS),
    CliCase("evaluate-out-is-not-a-results-file", _ev(data="ioi"),
            "not an lmxray evaluate results file",
            setup=_jsonl("rows.jsonl", {"kind": "row"})),
    CliCase("evaluate-out-not-utf8", _ev(data="ioi"), "not an lmxray evaluate results file",
            setup=_jsonl("rows.jsonl", raw=b"\xff\xfe\x00garbage\n")),
    CliCase("evaluate-out-of-another-run", _ev("--methods", "random", "--metrics", "deletion",
                                               "--n", "3", data="facts"),
            "another configuration",
            setup=lambda tmp: (tmp / "rows.jsonl").write_bytes((FIX / "old-rows.jsonl").read_bytes())),
    CliCase("evaluate-data-folder", _ev(data="{tmp}/ds"),
            "needs the 'datasets' package" if importlib.util.find_spec("datasets") is None
            else "not a datasets folder", outputs=ROWS,
            setup=lambda tmp: (tmp / "ds").mkdir()),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    return embedded_model()


def _attribution():
    return _tiny().attribute(OK["prompt"], target=OK["target"], method="occlusion")


def _evaluate(tmp: Path, examples=(OK,), **kw):
    from lmxray.evaluate import evaluate

    return evaluate(_tiny(), list(examples), progress=False, **{"methods": "random",
                                                                 "metrics": "deletion", **kw})


def _load(tmp: Path, source, **kw):
    from lmxray.evaluate import load_examples

    return load_examples(_tiny(), source, **kw)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


API_CASES: list[ApiCase] = [
    ApiCase("api-evaluate-no-examples", lambda tmp: _evaluate(tmp, []), "no examples"),
    ApiCase("api-evaluate-unknown-method", lambda tmp: _evaluate(tmp, methods=["nope"]),
            "unknown method", InputError),
    ApiCase("api-evaluate-batch-size-zero", lambda tmp: _evaluate(tmp, batch_size=0),
            "batch_size must be a positive integer", InputError),
    ApiCase("api-evaluate-sanity-examples-zero", lambda tmp: _evaluate(tmp, sanity_examples=0),
            "sanity_examples must be a positive integer", InputError),
    ApiCase("api-evaluate-unknown-metric", lambda tmp: _evaluate(tmp, metrics=["accuracy"]),
            "unknown metric", InputError),
    ApiCase("api-evaluate-out-is-a-folder", lambda tmp: _evaluate(tmp, out=tmp),
            "is a folder", InputError),
    ApiCase("api-evaluate-out-folder-missing",
            lambda tmp: _evaluate(tmp, out=tmp / "no" / "r.jsonl"), "does not exist", InputError,
            outputs=["{tmp}/no/r.jsonl"]),
    ApiCase("api-evaluate-example-without-target",
            lambda tmp: _evaluate(tmp, [{"prompt": "a b c"}]), "no 'target'", InputError),
    ApiCase("api-evaluate-empty-target",
            lambda tmp: _evaluate(tmp, [{"prompt": "a b c", "target": ""}]),
            "'target' of an example must be non-empty", InputError),
    ApiCase("api-load-examples-not-utf8",
            lambda tmp: _load(tmp, _write(tmp, "d.jsonl", NOT_UTF8)), "line 2 is not UTF-8",
            InputError),
    ApiCase("api-load-examples-n-above-facts", lambda tmp: _load(tmp, "facts", n=100000),
            "at most 2490", InputError),
    ApiCase("api-load-examples-n-above-list", lambda tmp: _load(tmp, [OK], n=2),
            "at most 1", InputError),
    ApiCase("api-load-examples-n-zero", lambda tmp: _load(tmp, [OK], n=0),
            "n must be a positive integer", InputError),
    ApiCase("api-load-examples-unknown-source", lambda tmp: _load(tmp, "nonesuch"),
            "neither a file", InputError),
    ApiCase("api-evaluation-load-missing",
            lambda tmp: __import__("lmxray.evaluate.report").evaluate.report.Evaluation.load(
                tmp / "none.jsonl"), "no such results file", FormatError),
    ApiCase("api-evaluation-load-leaderboard-json",
            lambda tmp: __import__("lmxray.evaluate.report").evaluate.report.Evaluation.load(
                FIX / "old-leaderboard.json"), "not an lmxray evaluate results file", FormatError),
    ApiCase("api-leaderboard-load-not-utf8",
            lambda tmp: __import__("lmxray.evaluate.report").evaluate.report.Leaderboard.load(
                _write(tmp, "b.json", b'{"format": "\xff"}')), "not UTF-8", InputError),
    ApiCase("api-leaderboard-load-rows-file",
            lambda tmp: __import__("lmxray.evaluate.report").evaluate.report.Leaderboard.load(
                FIX / "old-rows.jsonl"), "not valid JSON", FormatError),
    ApiCase("api-faithfulness-not-an-attribution",
            lambda tmp: __import__("lmxray.evaluate").evaluate.faithfulness(_tiny(), "a"),
            "expected an lmxray Attribution", InputError),
    ApiCase("api-faithfulness-bad-bins",
            lambda tmp: __import__("lmxray.evaluate").evaluate.faithfulness(
                _tiny(), _attribution(), bins=[0]), "bins must be percentages", InputError),
    ApiCase("api-plausibility-index-out-of-range",
            lambda tmp: __import__("lmxray.evaluate").evaluate.plausibility(
                _attribution(), [99], model=_tiny()), "outside the prompt", InputError),
    ApiCase("api-evidence-only-bos",
            lambda tmp: __import__("lmxray.evaluate").evaluate.evidence_recovery(
                _attribution(), [0], model=_tiny()), "no rankable prompt token", InputError),
    ApiCase("api-sanity-no-prompts",
            lambda tmp: __import__("lmxray.evaluate").evaluate.sanity_check(_tiny(), []),
            "no prompts", InputError),
    ApiCase("api-sanity-bad-mode",
            lambda tmp: __import__("lmxray.evaluate").evaluate.sanity_check(
                _tiny(), ["a"], [" b"], mode="sideways"), "mode must be", InputError),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
