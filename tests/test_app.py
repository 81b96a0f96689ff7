"""``lmxray serve``'s app without a browser: the JSON API, the job queue (progress, cancel, 429),
the guards (host, token, origin, size, CSP) and exports, on a tiny random model."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

import lmxray
from app_server import run
from conftest import build_tiny
from lmxray.app import Cancelled, Job, JobQueue, Limits, create_app
from lmxray.app.jobs import cancel_hooks
from lmxray.result import Attribution

LOCAL = "http://127.0.0.1"
TOKEN = "t" * 20


@pytest.fixture(scope="module")
def tiny():
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def client(tiny):
    return TestClient(create_app({"tiny": tiny}, limits=Limits(prompt_chars=200)), base_url=LOCAL)


def test_info_names_models_methods_and_limits(client):
    info = client.get("/api/info").json()
    assert info["models"] == ["tiny"]
    assert "saliency" in info["methods"] and "facts" in info["tasks"]
    assert info["limits"]["prompt_chars"] == 200
    assert info["verify"] is hasattr(Attribution, "verify")


def test_explain_two_methods_equals_the_python_api(client, tiny):
    s, r = run(client, {"kind": "explain", "prompt": "hello world", "target": " foo",
                        "methods": ["saliency", "occlusion"]})
    assert s["state"] == "done" and s["done"] == s["total"] == 2 and s["forwards"] > 0
    got = r.json()["attributions"]
    assert [a["method"] for a in got] == ["saliency", "occlusion"]
    for a in got:
        ref = tiny.attribute("hello world", " foo", method=a["method"])
        np.testing.assert_array_equal(Attribution.from_dict(a).scores, ref.scores)
        assert a["source_tokens"] == ref.source_tokens


def test_export_json_and_html_of_a_result(client):
    s, _ = run(client, {"kind": "explain", "prompt": "hello world", "target": " foo"})
    j = client.get(f"/api/jobs/{s['id']}/export?format=json")
    assert j.status_code == 200 and "attachment" in j.headers["content-disposition"]
    assert Attribution.from_dict(j.json()).method == "saliency"
    page = client.get(f"/api/jobs/{s['id']}/export?format=html")
    assert page.headers["content-type"].startswith("text/html") and "<html" in page.text.lower()
    bad = client.get(f"/api/jobs/{s['id']}/export?format=json&index=3")
    assert bad.status_code == 400 and "index must be 0..0" in bad.json()["error"]


@pytest.mark.parametrize("body,key", [
    ({"kind": "lens", "prompt": "hello world", "top_k": 3}, "top_tokens"),
    ({"kind": "trace", "prompt": "hello world foo", "start": 6, "end": 11, "n_samples": 2}, "restored"),
    ({"kind": "patch", "clean": "The capital of France is", "corrupt": "The capital of Spain is",
      "answer": " France", "foil": " Spain"}, "effects"),
    ({"kind": "heads", "n_seqs": 2, "seq_len": 8}, "scores"),
])
def test_inside_jobs(client, body, key):
    s, r = run(client, body)
    assert s["state"] == "done", s
    assert key in r.json() and r.json()["kind"] == body["kind"]


def test_trace_subject_from_selected_characters(client):
    _, r = run(client, {"kind": "trace", "prompt": "hello world foo", "start": 6, "end": 11, "n_samples": 1})
    tokens, subj = r.json()["tokens"], r.json()["subject_tokens"]
    assert "".join(tokens[i] for i in subj).strip() == "world"


def test_judge_on_an_upload(client):
    rows = "\n".join(json.dumps({"prompt": p, "target": " x"}) for p in ("a b c", "d e f", "g h i"))
    s, r = run(client, {"kind": "judge", "jsonl": rows, "methods": ["saliency", "random"], "n": 3})
    assert s["state"] == "done" and s["total"] == 3, s
    board = r.json()["leaderboard"]
    assert sorted(b["method"] for b in board) == ["random", "saliency"] and all(b["n"] == 3 for b in board)
    assert set(r.json()["curves"]) == {"random", "saliency"}


def test_patch_with_unequal_token_counts_is_a_400(client):
    s, r = run(client, {"kind": "patch", "clean": "hello world", "corrupt": "hello there"})
    assert s["state"] == "error" and r.status_code == 400 and "same number of tokens" in r.json()["error"]


def test_job_error_is_json_400(client):
    s, r = run(client, {"kind": "explain", "prompt": "hello world", "target": " foo", "foil": " foo bar baz"})
    assert s["state"] == "error" and s["status"] == 400
    assert r.status_code == 400 and "foil" in r.json()["error"]


def test_cancel_stops_a_running_job_inside_a_forward(tiny):
    q = JobQueue(size=2)
    started = threading.Event()

    def forever(job):
        ids = __import__("torch").tensor([[1, 2, 3]])
        with cancel_hooks(tiny.hf, job):
            while True:
                started.set()
                tiny.hf(ids)

    job = q.submit(Job(kind="loop", run=forever))
    assert started.wait(10)
    q.cancel(job)
    deadline = time.time() + 10
    while job.state != "cancelled" and time.time() < deadline:
        time.sleep(0.01)
    assert job.state == "cancelled" and job.forwards >= 1
    assert not tiny.hf._forward_pre_hooks  # hooks removed
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)


def test_queue_full_answers_429_and_cancel_of_a_queued_job(tiny):
    app = create_app({"tiny": tiny}, limits=Limits(queue=1))
    c = TestClient(app, base_url=LOCAL)
    gate = threading.Event()
    blocker = app.state.api.queue.submit(Job(kind="block", run=lambda job: gate.wait(30)))
    deadline = time.time() + 10
    while blocker.state != "running" and time.time() < deadline:  # the worker takes it: queue empty
        time.sleep(0.01)
    body = {"kind": "explain", "prompt": "hi", "target": " x"}
    first = c.post("/api/jobs", json=body)
    assert first.status_code == 202
    full = c.post("/api/jobs", json=body)
    assert full.status_code == 429 and "busy" in full.json()["error"]
    cancelled = c.delete(f"/api/jobs/{first.json()['id']}").json()
    assert cancelled["state"] == "cancelled"
    gate.set()
    r = c.get(f"/api/jobs/{first.json()['id']}/result")
    assert r.status_code == 409 and "cancelled" in r.json()["error"]


def test_events_stream_ends_with_the_final_state(client):
    r = client.post("/api/jobs", json={"kind": "explain", "prompt": "hello", "target": " x"})
    with client.stream("GET", f"/api/jobs/{r.json()['id']}/events") as s:
        lines = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: ")]
    assert lines[-1]["state"] == "done" and s.headers["content-type"].startswith("text/event-stream")


class FinishesDuringSnapshot(Job):
    """A job whose worker finishes it right after the event stream took a "running" snapshot:
    the interleaving that lost 1 load-test request in 200 (the stream then saw the job finished
    and closed, its last event saying "running")."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = threading.Event()

    def snapshot(self):
        snap = super().snapshot()
        if snap["state"] == "running" and not self.release.is_set():
            self.release.set()
            deadline = time.time() + 10
            while self.state != "done" and time.time() < deadline:
                time.sleep(0.005)
        return snap


def test_events_stream_ends_on_the_final_state_when_the_job_finishes_mid_snapshot(client):
    def work(job):
        job.step("working")
        assert job.release.wait(10)
        return "out"

    job = client.app.state.api.queue.submit(FinishesDuringSnapshot(kind="race", run=work))
    with client.stream("GET", f"/api/jobs/{job.id}/events") as s:
        states = [json.loads(x[6:])["state"] for x in s.iter_lines() if x.startswith("data: ")]
    assert job.release.is_set() and job.state == "done"
    assert "running" in states and states[-1] == "done", states


class CancelWhileStarting(threading.Event):
    """A cancel flag that lets a cancel arrive just as the worker has checked it and is
    starting the job (the worker waits in ``is_set`` until ``set`` was called)."""

    def __init__(self):
        super().__init__()
        self.checking, self.setting = threading.Event(), threading.Event()

    def is_set(self):
        got = super().is_set()
        if threading.current_thread().name == "lmxray-serve-worker" and not self.checking.is_set():
            self.checking.set()
            self.setting.wait(5)
            time.sleep(0.2)  # the cancel's own check runs now, before the worker marks the job running
        return got

    def set(self):
        super().set()
        self.setting.set()


def test_cancel_racing_with_the_worker_start_is_decided_once():
    q = JobQueue(size=2)
    gate = threading.Event()
    job = q.submit(Job(kind="quick", run=lambda job: gate.wait(10) and "out", cancel_event=CancelWhileStarting()))
    assert job.cancel_event.checking.wait(5)
    q.cancel(job)
    told = job.state
    gate.set()
    after = q.submit(Job(kind="after", run=lambda job: "next"))  # one worker, FIFO: this one ends last
    deadline = time.time() + 10
    while after.state != "done" and time.time() < deadline:
        time.sleep(0.01)
    # either the cancel found it queued (cancelled, never run) or running (it runs to its end);
    # never "cancelled" first and then run to "done"
    assert after.state == "done"
    assert (told, job.state, job.output) in (("cancelled", "cancelled", None), ("running", "done", "out")), (told, job.state)


def test_security_headers_and_no_cors(client):
    r = client.get("/", headers={"origin": "http://evil.example"})
    assert r.status_code == 200 and "<title>lmxray" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "access-control-allow-origin" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/js/app.js").status_code == 200


def test_guards(client, tiny):
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 421
    cross = client.post("/api/jobs", json={"kind": "heads"}, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert client.post("/api/jobs", content=b"kind=heads",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert client.get("/api/nothing").json()["error"].startswith("no such page")
    assert client.delete("/api/info").status_code == 405

    locked = TestClient(create_app({"tiny": tiny}, token=TOKEN), base_url="http://10.1.2.3")
    assert locked.get("/api/info").status_code == 401
    assert locked.get("/api/info", headers={"authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert locked.get("/api/info", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = locked.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
    assert locked.get("/api/info").status_code == 200  # the cookie now carries the token


def test_serve_command_is_mounted_with_its_options():
    from typer.testing import CliRunner

    from lmxray import cli

    r = CliRunner().invoke(cli.app, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in ("--model", "--host", "--port", "--token", "--queue"):
        assert opt in r.stdout


def test_serve_without_the_app_extra_is_one_line(monkeypatch):
    import sys

    from typer.testing import CliRunner

    from lmxray import cli

    for name in [n for n in sys.modules if n == "lmxray.app" or n.startswith("lmxray.app.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if `lmxray[app]` were not installed
    r = CliRunner().invoke(cli.app, ["serve"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'lmxray[app]'" in lines[0] and "uvicorn" in lines[0]
