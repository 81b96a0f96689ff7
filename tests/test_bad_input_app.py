"""Bad input for ``lmxray serve`` and its HTTP API: refused with one line (exit 2 on the CLI) or a
JSON ``{"error": ...}`` with a 4xx status, never a server error page."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

import lmxray
from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from conftest import build_tiny
from lmxray.app import Limits, check_bind, create_app
from lmxray.app.limits import choices, integer, text
from lmxray.app.tasks import Models, parse_upload
from lmxray.errors import InputError, ModelLoadError

LIM = Limits(upload_bytes=100)

CLI_CASES: list[CliCase] = [
    CliCase("serve-public-host-without-token", ["serve", "--host", "0.0.0.0"], "pass --token"),
    CliCase("serve-lan-host-without-token", ["serve", "--host", "192.168.1.5"], "exposes the server"),
    CliCase("serve-short-token", ["serve", "--token", "abc"], "at least 16"),
    CliCase("serve-short-token-public", ["serve", "--host", "0.0.0.0", "--token", "short"], "at least 16"),
    CliCase("app-serve-missing-model-folder", ["serve", "--model", "./no/such/model", "--port", "8765"],
            "does not exist"),
    CliCase("serve-model-is-a-file", ["serve", "--model", "{tmp}/m.txt", "--port", "8765"],
            "not a model folder", setup=lambda tmp: (tmp / "m.txt").write_text("x")),
    CliCase("serve-sae-without-name", ["serve", "--sae", "{tmp}"], "must be NAME=FOLDER"),
    CliCase("serve-sae-empty-name", ["serve", "--sae", "={tmp}"], "must be NAME=FOLDER"),
    CliCase("serve-sae-missing-folder", ["serve", "--sae", "x={tmp}/none"], "no SAE folder at"),
    CliCase("serve-sae-is-a-file", ["serve", "--sae", "x={tmp}/s.txt"], "is a file",
            setup=lambda tmp: (tmp / "s.txt").write_text("x")),
    CliCase("serve-sae-twice", ["serve", "--sae", "x={tmp}", "--sae", "x={tmp}"], "names 'x' twice"),
    CliCase("serve-sae-folder-without-cfg", ["serve", "--sae", "x={tmp}", "--port", "8765"], "cfg.json"),
]

API_CASES: list[ApiCase] = [
    ApiCase("app-bind-public-no-token", lambda t: check_bind("0.0.0.0", None), "pass --token", InputError),
    ApiCase("app-bind-ipv6-any-no-token", lambda t: check_bind("::", None), "pass --token", InputError),
    ApiCase("app-short-token", lambda t: check_bind("127.0.0.1", "x" * 15), "at least 16", InputError),
    ApiCase("app-unknown-model", lambda t: Models(["lmxray-tiny"]).check("gpt-5"), "unknown model", InputError),
    ApiCase("app-no-models", lambda t: Models([]), "no model to serve", InputError),
    ApiCase("app-create-unloadable-model", lambda t: create_app([str(t / "none")]), "does not exist",
            ModelLoadError),
    ApiCase("app-upload-too-big", lambda t: parse_upload("x" * 101, LIM), "over the limit", InputError),
    ApiCase("app-upload-not-json", lambda t: parse_upload("{oops\n", LIM), "line 1 is not JSON", InputError),
    ApiCase("app-upload-empty", lambda t: parse_upload("", LIM), "no examples rows", InputError),
    ApiCase("app-upload-no-target", lambda t: parse_upload('{"prompt": "a"}\n', LIM), "prompt and target",
            InputError),
    ApiCase("app-text-missing", lambda t: text({}, "prompt", 10), "missing or empty", InputError),
    ApiCase("app-integer-too-big", lambda t: integer({"n": 99}, "n", 1, 1, 10), "between 1 and 10", InputError),
    ApiCase("app-integer-bool", lambda t: integer({"n": True}, "n", 1, 1, 10), "whole number", InputError),
    ApiCase("app-choices-too-many", lambda t: choices({"m": ["a", "b", "c"]}, "m", ["a", "b", "c"], 2, ["a"]),
            "at most 2", InputError),
]

# HTTP: (id, method, path, json body or raw bytes, headers, status, message part)
BIG = "x" * 2001
HTTP_CASES = [
    ("unknown-model", "POST", "/api/jobs", {"kind": "explain", "model": "gpt-5", "prompt": "hi"}, {}, 400,
     "unknown model 'gpt-5'"),
    ("model-as-path", "POST", "/api/jobs", {"kind": "explain", "model": "/etc/passwd", "prompt": "hi"}, {}, 400,
     "unknown model"),
    ("oversize-prompt", "POST", "/api/jobs", {"kind": "explain", "prompt": BIG}, {}, 400, "over the limit of 2000"),
    ("empty-prompt", "POST", "/api/jobs", {"kind": "explain", "prompt": "  "}, {}, 400, "prompt is missing"),
    ("unknown-kind", "POST", "/api/jobs", {"kind": "rm -rf", "prompt": "x"}, {}, 400, "unknown kind"),
    ("unknown-method", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "methods": ["magic"]}, {}, 400,
     "unknown method 'magic'"),
    ("three-methods", "POST", "/api/jobs", {"kind": "explain", "prompt": "x",
     "methods": ["saliency", "occlusion", "random"]}, {}, 400, "at most 2"),
    ("too-many-new-tokens", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "max_new_tokens": 500}, {}, 400,
     "between 1 and 20"),
    ("zero-new-tokens", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "max_new_tokens": 0}, {}, 400,
     "between 1 and 20"),
    ("target-and-new-tokens", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "target": " y",
     "max_new_tokens": 2}, {}, 400, "not both"),
    ("too-many-steps", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "methods": ["integrated_gradients"],
     "n_steps": 10000}, {}, 400, "n_steps must be between 1 and 64"),
    ("too-many-samples", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "methods": ["shapley_sampling"],
     "n_samples": 10000}, {}, 400, "n_samples must be between"),
    ("steps-not-a-number", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "methods": ["integrated_gradients"],
     "n_steps": "many"}, {}, 400, "whole number"),
    ("verify-not-bool", "POST", "/api/jobs", {"kind": "explain", "prompt": "x", "verify": "yes"}, {}, 400,
     "true or false"),
    ("trace-no-subject", "POST", "/api/jobs", {"kind": "trace", "prompt": "hello world"}, {}, 400,
     "select the subject"),
    ("trace-subject-absent", "POST", "/api/jobs", {"kind": "trace", "prompt": "hello world", "subject": "Paris"},
     {}, 400, "does not occur"),
    ("trace-span-outside", "POST", "/api/jobs", {"kind": "trace", "prompt": "hello", "start": 2, "end": 40}, {},
     400, "end must be between"),
    ("trace-too-many-samples", "POST", "/api/jobs", {"kind": "trace", "prompt": "hello", "subject": "he",
     "n_samples": 1000}, {}, 400, "n_samples"),
    ("patch-unknown-site", "POST", "/api/jobs", {"kind": "patch", "clean": "a", "corrupt": "b", "site": "x"}, {},
     400, "unknown site"),
    ("heads-too-long", "POST", "/api/jobs", {"kind": "heads", "seq_len": 5000}, {}, 400, "seq_len"),
    ("app-lens-top-k-zero", "POST", "/api/jobs", {"kind": "lens", "prompt": "x", "top_k": 0}, {}, 400, "top_k"),
    ("judge-unknown-task", "POST", "/api/jobs", {"kind": "judge", "task": "chess"}, {}, 400, "unknown task"),
    ("judge-too-many-examples", "POST", "/api/jobs", {"kind": "judge", "task": "facts", "n": 100000}, {}, 400,
     "n must be between"),
    ("judge-malformed-upload", "POST", "/api/jobs", {"kind": "judge", "jsonl": '{"prompt": "a", "target": "b"}\n{oops'},
     {}, 400, "the uploaded JSONL line 2 is not JSON"),
    ("judge-upload-not-text", "POST", "/api/jobs", {"kind": "judge", "jsonl": [1, 2]}, {}, 400, "file's text"),
    ("judge-upload-too-big", "POST", "/api/jobs", {"kind": "judge", "jsonl": "x" * 1_000_001}, {}, 400,
     "over the limit of 1000000"),
    ("body-too-big", "POST", "/api/jobs", b"{" + b" " * 2_000_001 + b"}", {"content-type": "application/json"}, 413,
     "over the limit"),
    ("body-not-json", "POST", "/api/jobs", b"{kind:", {"content-type": "application/json"}, 400, "not JSON"),
    ("body-not-object", "POST", "/api/jobs", [1, 2], {}, 400, "JSON object"),
    ("body-not-utf8", "POST", "/api/jobs", b"\xff\xfe", {"content-type": "application/json"}, 400, "not JSON"),
    ("form-post", "POST", "/api/jobs", b"kind=heads", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "as JSON"),
    ("cross-origin-post", "POST", "/api/jobs", {"kind": "heads"}, {"origin": "http://evil.example"}, 403,
     "cross-origin"),
    ("foreign-host-header", "GET", "/api/info", None, {"host": "attacker.example"}, 421, "not this machine"),
    ("unknown-job", "GET", "/api/jobs/nope", None, {}, 404, "no such job"),
    ("unknown-job-export", "GET", "/api/jobs/nope/export", None, {}, 404, "no such job"),
    ("no-such-page", "GET", "/etc/passwd", None, {}, 404, "no such page"),
    ("static-traversal", "GET", "/static/../server.py", None, {}, 404, ""),
    ("wrong-method", "PUT", "/api/jobs", None, {}, 405, ""),
]


@pytest.fixture(scope="module")
def client():
    hf, tok = build_tiny("llama")
    return TestClient(create_app({"tiny": lmxray.load(model=hf, tokenizer=tok)}), base_url="http://127.0.0.1")


@pytest.mark.parametrize("kind,case", [("cli", c) for c in CLI_CASES] + [("api", c) for c in API_CASES],
                         ids=lambda c: c if isinstance(c, str) else c.id)
def test_cli_and_api_bad_input(kind, case, tmp_path):
    (run_cli_case if kind == "cli" else run_api_case)(case, tmp_path)


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c[0])
def test_http_bad_input(case, client):
    _, method, path, body, headers, status, match = case
    kw: dict = {"headers": headers}
    if isinstance(body, bytes):
        kw["content"] = body
    elif body is not None:
        kw["json"] = body
    r = client.request(method, path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert match in err and "\n" not in err and "Traceback" not in err

