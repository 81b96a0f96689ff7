"""Bad input for ``lmxray self-explain`` and the self-explanation API (generators, data, runner)."""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pytest

from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from conftest import build_tiny
from lmxray.errors import FormatError, InputError, MethodError
from lmxray.selfexplain import MCItem, SelfExplainReport
from lmxray.selfexplain.data import load_items, to_items
from lmxray.selfexplain.generate import EndpointGenerator, LocalGenerator
from lmxray.selfexplain.runner import run
from lmxray.selfexplain.stats import bootstrap_ci

GOOD = {"question": "Which is a fruit?", "options": ["chair", "apple", "river"], "answer": "B"}


def _jsonl(*rows: object, name: str = "q.jsonl") -> object:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                        for r in rows), encoding="utf-8")

    return setup


def _bytes(data: bytes, name: str = "q.jsonl") -> object:
    return lambda tmp: (tmp / name).write_bytes(data)


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


Q = "{tmp}/q.jsonl"
OUT = ["--out", "{tmp}/rows.jsonl"]
SE = "self-explain"

CLI_CASES: list[CliCase] = [
    CliCase("se-no-questions", [SE, *OUT], "give the questions", outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-data-and-task", [SE, Q, "--task", "rationale-faithful", *OUT], "not both",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl(GOOD)),
    CliCase("se-missing-file", [SE, "{tmp}/nope.jsonl", *OUT], "no questions file",
            outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-data-is-a-folder", [SE, "{tmp}", *OUT], "is a folder", outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-line-without-options", [SE, Q, *OUT, "--tests", "bias"],
            "q.jsonl line 2: has no 'options' field", outputs=["{tmp}/rows.jsonl"],
            setup=_jsonl(GOOD, {"question": "Which is red?", "answer": 0})),
    CliCase("se-line-without-answer", [SE, Q, *OUT, "--tests", "bias"],
            "q.jsonl line 1: has no 'answer' field", outputs=["{tmp}/rows.jsonl"],
            setup=_jsonl({"question": "Which is red?", "options": ["a", "b"]})),
    CliCase("se-line-without-either", [SE, Q, *OUT, "--tests", "bias"],
            "has no 'options' and no 'answer'", outputs=["{tmp}/rows.jsonl"],
            setup=_jsonl({"question": "Which is red?"})),
    CliCase("se-non-utf8", [SE, Q, *OUT, "--tests", "bias"], "line 2 is not UTF-8",
            outputs=["{tmp}/rows.jsonl"], setup=_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")),
    CliCase("se-not-json", [SE, Q, *OUT, "--tests", "bias"], "line 1 is not JSON",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl("{question: 1")),
    CliCase("se-not-an-object", [SE, Q, *OUT, "--tests", "bias"], "line 1 is not a JSON object",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl("[1, 2]")),
    CliCase("se-answer-out-of-range", [SE, Q, *OUT, "--tests", "bias"], "is not one of the 3 options",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "answer": 3})),
    CliCase("se-answer-letter-out-of-range", [SE, Q, *OUT, "--tests", "bias"],
            "is not one of the 3 options", outputs=["{tmp}/rows.jsonl"],
            setup=_jsonl({**GOOD, "answer": "(D)"})),
    CliCase("se-answer-not-a-letter", [SE, Q, *OUT, "--tests", "bias"], "0-based option index",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "answer": "apple"})),
    CliCase("se-answer-bool", [SE, Q, *OUT, "--tests", "bias"], "option index or letter",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "answer": True})),
    CliCase("se-one-option", [SE, Q, *OUT, "--tests", "bias"], "'options' must be a list of 2 to 26",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "options": ["only"], "answer": 0})),
    CliCase("se-empty-option", [SE, Q, *OUT, "--tests", "bias"], "every option must be a non-empty",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "options": ["a", " "]})),
    CliCase("se-empty-question", [SE, Q, *OUT, "--tests", "bias"], "'question' must be a non-empty",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "question": ""})),
    CliCase("se-duplicate-ids", [SE, Q, *OUT, "--tests", "bias"], "share the id 'x'",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl({**GOOD, "id": "x"}, {**GOOD, "id": "x"})),
    CliCase("se-empty-file", [SE, Q, *OUT, "--tests", "bias"], "holds no questions",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl()),
    CliCase("se-unknown-test", [SE, Q, *OUT, "--tests", "bias,telepathy"], "unknown test 'telepathy'",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl(GOOD)),
    CliCase("se-no-test", [SE, Q, *OUT, "--tests", ","], "no test chosen",
            outputs=["{tmp}/rows.jsonl"], setup=_jsonl(GOOD)),
    CliCase("se-unknown-task", [SE, "--task", "organism-psychic", *OUT], "unknown task",
            outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-model-and-endpoint", [SE, Q, "--model", "x", "--endpoint", "http://127.0.0.1:1/v1",
                                      *OUT], "not both", setup=_jsonl(GOOD)),
    CliCase("se-bad-api", [SE, Q, "--endpoint", "http://127.0.0.1:1/v1", "--api", "grpc", *OUT],
            "--api must be chat or completions", setup=_jsonl(GOOD)),
    CliCase("se-bad-endpoint-url", [SE, Q, "--endpoint", "ftp://127.0.0.1/v1", "--tests", "bias",
                                    *OUT], "endpoint URL must be http", setup=_jsonl(GOOD),
            outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-unreachable-endpoint", [SE, Q, "--endpoint", _dead_url(), "--retries", "1",
                                        "--timeout", "2", "--tests", "bias", "--no-progress", *OUT,
                                        "--json", "{tmp}/r.json", "--html", "{tmp}/r.html"],
            "after 1 retry", outputs=["{tmp}/rows.jsonl", "{tmp}/r.json", "{tmp}/r.html"],
            setup=_jsonl(GOOD)),
    CliCase("se-control-with-model", [SE, "--task", "rationale-random", "--model", "x", *OUT],
            "takes no --model", outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-bias-without-bias-test", [SE, Q, "--tests", "cot", "--bias", "suggested", *OUT],
            "--bias is an option of the bias test", setup=_jsonl(GOOD),
            outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-n-zero", [SE, Q, "--n", "0", *OUT], "--n", setup=_jsonl(GOOD)),
    CliCase("se-negative-retries", [SE, Q, "--retries", "-1", *OUT], "--retries", setup=_jsonl(GOOD)),
    CliCase("se-zero-new-tokens", [SE, Q, "--max-new-tokens", "0", *OUT], "--max-new-tokens",
            setup=_jsonl(GOOD)),
    CliCase("se-json-is-a-folder", [SE, Q, "--tests", "bias", *OUT, "--json", "{tmp}"],
            "is a directory", setup=_jsonl(GOOD), outputs=["{tmp}/rows.jsonl"]),
    CliCase("se-html-no-such-folder", [SE, Q, "--tests", "bias", *OUT, "--html", "{tmp}/no/r.html"],
            "does not exist", setup=_jsonl(GOOD), outputs=["{tmp}/rows.jsonl", "{tmp}/no/r.html"]),
    CliCase("se-out-is-a-folder", [SE, Q, "--tests", "bias", "--out", "{tmp}"], "is a directory",
            setup=_jsonl(GOOD)),
    CliCase("se-out-not-a-rows-file", [SE, Q, "--tests", "bias", "--no-progress", "--out",
                                       "{tmp}/other.jsonl", "--json", "{tmp}/r.json"],
            "is not an lmxray self-explain rows file", outputs=["{tmp}/r.json"],
            setup=lambda tmp: (_jsonl(GOOD)(tmp), (tmp / "other.jsonl").write_text('{"a": 1}\n'))),
    CliCase("se-out-clashes-with-json", [SE, Q, "--tests", "bias", *OUT, "--json", "{tmp}/rows.jsonl"],
            "rows.jsonl", setup=_jsonl(GOOD), outputs=["{tmp}/rows.jsonl"]),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    import lmxray

    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


def _gen():
    return LocalGenerator(_tiny())


def _endpoint(url: str = "http://127.0.0.1:1/v1", **kw):
    return EndpointGenerator(url, **kw)


def _run(*args, **kw):
    def noop(gen, fmt, items, **opts):
        return []

    registry = {"noop": {"run": noop, "aggregate": lambda rows: {}, "flags": lambda agg: False}}
    kw.setdefault("registry", registry)
    kw.setdefault("fmt", object())
    kw.setdefault("progress", False)
    return run(*args, **kw)


ITEM = MCItem("q", "Which?", ("a", "b"), 0)


def _items(*args, **kw):
    return to_items(*args, **kw)


def _report(tmp: Path):
    (tmp / "r.json").write_text('{"format": "lmxray.attribution/1"}')
    return SelfExplainReport.load(tmp / "r.json")


API_CASES: list[ApiCase] = [
    ApiCase("se-local-needs-a-model", lambda tmp: LocalGenerator("gpt2"), "needs an lmxray Model",
            InputError),
    ApiCase("se-prompts-one-string", lambda tmp: _gen().generate("hi", max_new_tokens=2),
            "not one string", InputError),
    ApiCase("se-prompt-not-a-string", lambda tmp: _gen().generate([3], max_new_tokens=2),
            "prompt 0 is a int", InputError),
    ApiCase("se-api-zero-new-tokens", lambda tmp: _gen().generate(["hi"], max_new_tokens=0),
            "max_new_tokens must be a positive integer", InputError),
    ApiCase("se-stop-one-string", lambda tmp: _gen().generate(["hi"], max_new_tokens=2, stop="x"),
            "stop must be a list", InputError),
    ApiCase("se-stop-empty", lambda tmp: _gen().generate(["hi"], max_new_tokens=2, stop=[""]),
            "non-empty strings", InputError),
    ApiCase("se-prompt-too-long", lambda tmp: _gen().generate(["hi " * 80], max_new_tokens=2),
            "longer than the model's context", InputError),
    ApiCase("se-n-options-zero", lambda tmp: _gen().option_logprobs(["hi"], 0),
            "n_options must be an integer 1..26", InputError),
    ApiCase("se-endpoint-empty-url", lambda tmp: _endpoint(""), "URL is empty", InputError),
    ApiCase("se-endpoint-bad-scheme", lambda tmp: _endpoint("ftp://127.0.0.1/v1"),
            "must be http(s)", InputError),
    ApiCase("se-endpoint-bad-api", lambda tmp: _endpoint(api="grpc"), "api must be", InputError),
    ApiCase("se-endpoint-negative-retries", lambda tmp: _endpoint(retries=-1), "retries must be",
            InputError),
    ApiCase("se-endpoint-zero-timeout", lambda tmp: _endpoint(timeout=0), "timeout must be",
            InputError),
    ApiCase("se-endpoint-unreachable", lambda tmp: _endpoint(_dead_url(), retries=1, timeout=2,
                                                             sleep=lambda s: None).generate(
        ["hi"], max_new_tokens=2), "after 1 retry", MethodError),
    ApiCase("se-run-unknown-test", lambda tmp: _run(_tiny(), [ITEM], "nope"), "unknown test 'nope'",
            InputError),
    ApiCase("se-run-chunk-size", lambda tmp: _run(_tiny(), [ITEM], "noop", chunk_size=0),
            "chunk_size must be", InputError),
    ApiCase("se-run-not-a-model", lambda tmp: _run("gpt2", [ITEM], "noop"),
            "needs an lmxray Model or a Generator", InputError),
    ApiCase("se-run-params-for-another-test", lambda tmp: _run(_tiny(), [ITEM], "noop",
                                                                params={"bias": {}}),
            "params for 'bias'", InputError),
    ApiCase("se-run-no-items", lambda tmp: _run(_tiny(), [], "noop"), "no items", InputError),
    ApiCase("se-items-a-dict", lambda tmp: _items({"question": "x"}), "items must be", InputError),
    ApiCase("se-items-function-without-n", lambda tmp: _items(lambda n, seed: []), "give n=",
            InputError),
    ApiCase("se-items-bad-record", lambda tmp: _items([{"question": "x", "options": ["a", "b"]}]),
            "item 0: has no 'answer'", InputError),
    ApiCase("se-items-n-zero", lambda tmp: _items([ITEM], n=0), "n must be a positive", InputError),
    ApiCase("se-load-missing", lambda tmp: load_items(tmp / "none.jsonl"), "no questions JSONL file",
            InputError),
    ApiCase("se-bootstrap-n-zero", lambda tmp: bootstrap_ci([1.0], n=0), "n must be", InputError),
    ApiCase("se-report-wrong-format", _report, "not an lmxray.selfexplain file", FormatError),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
