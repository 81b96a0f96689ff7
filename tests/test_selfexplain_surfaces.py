"""Self-explanation surfaces: batched generation equals a loop of ``generate`` calls, the served
model answers the same over HTTP (chat and completions, on 127.0.0.1), retries with back-off are
counted, interrupted runs resume with no row lost or repeated, answer parsing, statistics, data,
views and the CLI."""

from __future__ import annotations

import copy
import http.client
import http.server
import json
import math
import socket
import threading
from urllib.parse import urlparse

import pytest
import torch
from typer.testing import CliRunner

import lmxray
import lmxray.blackbox as bb
from conftest import build_tiny
from lmxray import cli
from lmxray.errors import InputError, MethodError
from lmxray.selfexplain import MCItem, SelfExplainReport
from lmxray.selfexplain.data import load_items, to_items
from lmxray.selfexplain.generate import EndpointGenerator, LocalGenerator
from lmxray.selfexplain.parse import parse_all, parse_answer, parse_letter
from lmxray.selfexplain.runner import ROWS_FORMAT, run
from lmxray.selfexplain.stats import bootstrap_ci, overlap, paired_difference, proportion

PROMPTS = [
    "The capital of France is",
    "k3=blue k7=red ; k7 =",
    "When Mary and John went to the store, John gave a drink to",
    "a",
    "The quick brown fox jumps over the lazy dog. A dog is",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; on a shared CPU two threads are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family: str = "llama"):
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def tiny():
    return _model("llama")


@pytest.fixture(scope="module")
def server(tiny):
    with bb.serve(tiny, name="tiny") as srv:
        yield srv


# ---------------------------------------------------------------- batched generation
@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_batched_generation_equals_a_loop_of_generate_calls(family):
    m = _model(family)
    gen = LocalGenerator(m)
    out = gen.generate(PROMPTS, max_new_tokens=12)
    assert [g.prompt for g in out] == PROMPTS
    for g, p in zip(out, PROMPTS, strict=True):
        ref = m.generate_ids(m.encode(p), 12)  # one unpadded sequence, no batching
        assert g.n_tokens == len(ref)
        assert g.text == m.tokenizer.decode(ref, skip_special_tokens=True)
        assert g.stopped == ("length" if len(ref) == 12 else "eos")
        assert g.retries == 0
    # random tiny models never stop early: the prompts really had different lengths to pad
    assert len({len(m.encode(p)) for p in PROMPTS}) > 2


def test_chunked_batches_and_stop_strings(tiny):
    whole = LocalGenerator(tiny).generate(PROMPTS, max_new_tokens=10)
    pairs = LocalGenerator(tiny, batch_size=2).generate(PROMPTS, max_new_tokens=10)
    assert [g.text for g in pairs] == [g.text for g in whole]
    stop = [whole[0].text[3:5]]  # a string that occurs in the first continuation
    cut = LocalGenerator(tiny).generate(PROMPTS, max_new_tokens=10, stop=stop)
    for full, g in zip(whole, cut, strict=True):
        i = full.text.find(stop[0])
        if i >= 0:
            assert g.stopped == "stop" and g.text == full.text[:i]
        else:
            assert g.text == full.text and g.stopped == full.stopped
    assert cut[0].stopped == "stop"


def test_option_logprobs_are_the_next_token_log_probs(tiny):
    gen = LocalGenerator(tiny)
    got = gen.option_logprobs(PROMPTS[:3], 3)
    ids = [tiny.encode_target(c)[0] for c in "ABC"]
    for p, row in zip(PROMPTS[:3], got, strict=True):
        ref = torch.log_softmax(tiny.logits(p)[-1].float(), -1)[ids]
        assert row == pytest.approx(ref.tolist(), abs=1e-4)


# ---------------------------------------------------------------- served model
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_endpoint_gives_the_same_greedy_outputs_as_in_process(tiny, server, api):
    local = LocalGenerator(tiny).generate(PROMPTS, max_new_tokens=12, stop=["is"])
    before = server.requests
    # three requests in flight at once with chat: the answers still come back in prompt order
    remote = EndpointGenerator(server.url, "tiny", api=api, concurrency=3 if api == "chat" else 1
                               ).generate(PROMPTS, max_new_tokens=12, stop=["is"])
    assert server.requests - before == len(PROMPTS)  # it really went over HTTP
    for a, b in zip(local, remote, strict=True):
        assert (a.text, a.n_tokens, a.stopped) == (b.text, b.n_tokens, b.stopped)
        assert b.retries == 0
    assert any(g.stopped == "stop" for g in local)


def test_option_logprobs_through_the_endpoint(tiny, server):
    prompts = [p + " The best answer is: (" for p in PROMPTS[:3]]
    local = LocalGenerator(tiny).option_logprobs(prompts, 3)
    remote = EndpointGenerator(server.url, "tiny", api="completions").option_logprobs(prompts, 3)
    assert remote is not None
    for a, b in zip(local, remote, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
    assert EndpointGenerator(server.url, "tiny", api="chat").option_logprobs(prompts, 3) is None


def _post(url: str, body: object, path: str = "/v1/chat/completions"):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null")
    conn.close()
    return out


def test_chat_protocol(tiny, server):
    status, out = _post(server.url, {"model": "tiny", "messages": [
        {"role": "user", "content": "The capital of France is"}], "max_tokens": 4, "temperature": 0})
    assert status == 200 and out["object"] == "chat.completion"
    ch = out["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert ch["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] == len(tiny.encode("The capital of France is"))
    assert out["usage"]["completion_tokens"] <= 4
    # no chat template: the turns are joined by blank lines (a last assistant turn is a prefill)
    msgs = [{"role": "user", "content": "k3=blue"}, {"role": "assistant", "content": "k7 ="}]
    _, joined = _post(server.url, {"messages": msgs, "max_tokens": 5})
    ref = LocalGenerator(tiny).generate(["k3=blue\n\nk7 ="], max_new_tokens=5)[0]
    assert joined["choices"][0]["message"]["content"] == ref.text


def test_chat_uses_the_tokenizer_chat_template():
    hf, tok = build_tiny("llama")
    tok = copy.deepcopy(tok)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    m = lmxray.load(model=hf, tokenizer=tok)
    msgs = [{"role": "user", "content": "The capital of France is"}]
    with bb.serve(m, name="chatty") as srv:
        remote = EndpointGenerator(srv.url, "chatty", api="chat")
        got = remote.generate(["The capital of France is"], max_new_tokens=6)[0]
        _, pre = _post(srv.url, {"messages": [*msgs, {"role": "assistant", "content": "It is"}],
                                 "max_tokens": 6})
    prompt = m.chat(msgs)
    assert prompt.startswith("[user] The capital of France is") and prompt.endswith("[assistant]")
    assert got.text == LocalGenerator(m).generate([prompt], max_new_tokens=6)[0].text
    prefilled = LocalGenerator(m).generate([prompt + "It is"], max_new_tokens=6)[0]
    assert pre["choices"][0]["message"]["content"] == prefilled.text


@pytest.mark.parametrize(
    "body, status, match",
    [
        ({"messages": []}, 400, "messages is missing"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "each message"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "each message"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 1}, 400, "greedily"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "one choice"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "no log-probs"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, 400, "stop must"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "other"}, 404, "unknown model"),
    ],
)
def test_chat_rejects_bad_requests(server, body, status, match):
    got, out = _post(server.url, body)
    assert got == status and match in out["error"]["message"]


def test_completions_stop_and_stop_reason(tiny, server):
    full = LocalGenerator(tiny).generate([PROMPTS[0]], max_new_tokens=10)[0].text
    stop = full[2:4]
    status, out = _post(server.url, {"prompt": PROMPTS[0], "max_tokens": 10, "stop": stop},
                        path="/v1/completions")
    ch = out["choices"][0]
    assert status == 200 and ch["finish_reason"] == "stop" and ch["stop_reason"] == stop
    assert ch["text"] == full[: full.find(stop)]


# ---------------------------------------------------------------- retries
class _Flaky:
    """A local server answering 503 to the first ``fail`` requests, then a chat completion;
    it records the Authorization headers it sees."""

    def __init__(self, fail: int, status: int = 503) -> None:
        self.fail, self.status, self.calls, self.auth = fail, status, 0, []
        flaky = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                return

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                flaky.calls += 1
                flaky.auth.append(self.headers.get("Authorization"))
                if flaky.calls <= flaky.fail:
                    body, code = {"error": {"message": "busy"}}, flaky.status
                else:
                    body, code = {"choices": [{"message": {"content": "The best answer is: (B)"},
                                               "finish_reason": "stop"}],
                                  "usage": {"completion_tokens": 7}}, 200
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_with_backoff_are_counted(monkeypatch):
    monkeypatch.setenv("LMXRAY_TEST_KEY", "sk-secret-123")
    flaky = _Flaky(fail=2)
    waits: list[float] = []
    try:
        gen = EndpointGenerator(flaky.url, "m", api_key_env="LMXRAY_TEST_KEY", retries=3,
                                backoff=0.25, sleep=waits.append)
        g = gen.generate(["Q?"], max_new_tokens=8)[0]
    finally:
        flaky.close()
    assert (g.text, g.retries, g.n_tokens, g.stopped) == ("The best answer is: (B)", 2, 7, "eos")
    assert gen.retries_total == 2 and flaky.calls == 3
    assert waits == [0.25, 0.5]  # exponential back-off
    assert flaky.auth == ["Bearer sk-secret-123"] * 3
    assert "sk-secret" not in json.dumps(gen.config()) and "sk-secret" not in repr(gen)


def test_too_many_failures_and_client_errors_are_one_line():
    flaky = _Flaky(fail=10)
    try:
        gen = EndpointGenerator(flaky.url, retries=2, sleep=lambda s: None)
        with pytest.raises(MethodError, match="after 2 retries") as exc:
            gen.generate(["Q?"], max_new_tokens=4)
        assert flaky.calls == 3 and "\n" not in str(exc.value) and "503" in str(exc.value)
    finally:
        flaky.close()
    bad = _Flaky(fail=10, status=400)
    try:
        with pytest.raises(MethodError, match="answered 400: busy"):
            EndpointGenerator(bad.url, retries=3, sleep=lambda s: None).generate(["Q?"], max_new_tokens=4)
        assert bad.calls == 1  # a client error is not retried
    finally:
        bad.close()


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_endpoint_is_one_line_after_the_retries():
    waits: list[float] = []
    gen = EndpointGenerator(f"http://127.0.0.1:{_dead_port()}/v1", retries=3, backoff=0.1,
                            timeout=5, sleep=waits.append)
    with pytest.raises(MethodError, match="after 3 retries") as exc:
        gen.generate(["Q?"], max_new_tokens=4)
    assert "\n" not in str(exc.value) and len(waits) == 3 and gen.retries_total == 3


def test_run_reports_endpoint_retries(monkeypatch, tmp_path):
    flaky = _Flaky(fail=1)
    try:
        gen = EndpointGenerator(flaky.url, "m", sleep=lambda s: None)
        rep = run(gen, [MCItem("q1", "Q?", ("x", "y"), 1)], "echo", fmt=_Fmt(),
                  registry=_registry(), progress=False, out=tmp_path / "rows.jsonl")
    finally:
        flaky.close()
    assert rep.info["retries"] == 1 and rep.rows[0]["answer"] == 1


# ---------------------------------------------------------------- runner, resume
class _Fmt:
    name = "plain"

    def cot_prompt(self, item, bias=None):
        return f"{item.question} " + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(item.options))

    def parse_answer(self, text, n_options):
        return parse_answer(text, n_options)


def _echo_test(calls: list[int] | None = None, interrupt_at: int | None = None):
    """A fake test: one CoT generation per item, two rows per item."""

    def run_echo(gen, fmt, items, max_new_tokens=6):
        if calls is not None:
            calls.append(len(items))
            if interrupt_at is not None and len(calls) == interrupt_at:
                raise KeyboardInterrupt
        outs = gen.generate([fmt.cot_prompt(it) for it in items], max_new_tokens=max_new_tokens)
        rows = []
        for it, g in zip(items, outs, strict=True):
            a = fmt.parse_answer(g.text, len(it.options))
            for variant in ("full", "again"):
                rows.append({"test": "echo", "id": it.id, "variant": variant, "answer": a,
                             "reference": it.answer, "agree": None if a is None else a == it.answer,
                             "parse_failed": a is None, "explanation": g.text})
        return rows

    return run_echo


def _aggregate(rows):
    full = [r for r in rows if r["variant"] == "full"]
    return {"accuracy": bootstrap_ci([float(r["agree"]) for r in full if r["agree"] is not None]),
            "n": (len(full),) * 3, "parse_failed": (sum(r["parse_failed"] for r in full),) * 3}


def _registry(calls=None, interrupt_at=None):
    return {"echo": {"run": _echo_test(calls, interrupt_at), "aggregate": _aggregate,
                     "flags": lambda agg: agg["accuracy"][0] < 0.5}}


ITEMS = [MCItem(f"q{i}", f"Question {i}: which?", ("apple", "chair", "river"), i % 3)
         for i in range(10)]


def _key(rows):
    return [(r["test"], r["id"], r["variant"]) for r in rows]


def test_interrupted_run_resumes_with_no_row_lost_or_repeated(tiny, tmp_path):
    ref = run(tiny, ITEMS, "echo", fmt=_Fmt(), registry=_registry(), chunk_size=3, progress=False)
    out = tmp_path / "rows.jsonl"
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        run(tiny, ITEMS, "echo", fmt=_Fmt(), registry=_registry(calls, interrupt_at=3),
            chunk_size=3, out=out, progress=False)
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept[0]["kind"] == "header" and kept[0]["format"] == ROWS_FORMAT
    assert sum(r["kind"] == "row" for r in kept) == 12  # two chunks of 3 items, 2 rows each
    calls2: list[int] = []
    rep = run(tiny, ITEMS, "echo", fmt=_Fmt(), registry=_registry(calls2), chunk_size=3, out=out,
              progress=False)
    assert calls2 == [3, 1]  # only the 4 items not done
    assert _key(rep.rows) == _key(ref.rows) and len(set(_key(rep.rows))) == 20
    assert [r["explanation"] for r in rep.rows] == [r["explanation"] for r in ref.rows]
    assert rep.info["resumed_rows"] == 12 and rep.aggregates == ref.aggregates
    # a third run has nothing left to do and changes nothing
    calls3: list[int] = []
    again = run(tiny, ITEMS, "echo", fmt=_Fmt(), registry=_registry(calls3), chunk_size=3, out=out,
                progress=False)
    assert calls3 == [] and _key(again.rows) == _key(ref.rows)


def test_a_chunk_cut_short_is_recomputed(tiny, tmp_path):
    out = tmp_path / "rows.jsonl"
    ref = run(tiny, ITEMS[:4], "echo", fmt=_Fmt(), registry=_registry(), chunk_size=2, out=out,
              progress=False)
    lines = out.read_text().splitlines(keepends=True)
    # drop the last done record and tear the line before it: the last chunk is incomplete
    torn = "".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2]
    out.write_text(torn)
    calls: list[int] = []
    rep = run(tiny, ITEMS[:4], "echo", fmt=_Fmt(), registry=_registry(calls), chunk_size=2,
              out=out, progress=False)
    assert calls == [2] and _key(rep.rows) == _key(ref.rows)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sum(r["kind"] == "row" for r in recs) == 8 and sum(r["kind"] == "done" for r in recs) == 2


def test_another_configuration_is_refused_and_no_resume_restarts(tiny, tmp_path):
    out = tmp_path / "rows.jsonl"
    run(tiny, ITEMS[:2], "echo", fmt=_Fmt(), registry=_registry(), out=out, progress=False)
    with pytest.raises(InputError, match="another configuration .*items"):
        run(tiny, ITEMS[:3], "echo", fmt=_Fmt(), registry=_registry(), out=out, progress=False)
    rep = run(tiny, ITEMS[:3], "echo", fmt=_Fmt(), registry=_registry(), out=out, resume=False,
              progress=False)
    assert len(rep.rows) == 6 and rep.info["resumed_rows"] == 0


def test_report_round_trip_dataframe_and_views(tiny, tmp_path):
    items = [*ITEMS[:3], MCItem("evil", "<script>alert(1)</script>", ("<b>x</b>", "y"), 0)]
    rep = run(tiny, items, "echo", fmt=_Fmt(), registry=_registry(), progress=False)
    shown = next(r for r in rep.rows if r["id"] == "evil" and r["variant"] == "full")
    shown["explanation"] = "</td><script>alert('x')</script>\x1b[31m"
    path = rep.save(tmp_path / "r.json")
    back = SelfExplainReport.load(path)
    assert back.rows == rep.rows and back.flags == rep.flags
    assert json.loads(path.read_text())["format"] == "lmxray.selfexplain/1"
    assert all(math.isclose(a, b) or (math.isnan(a) and math.isnan(b))
               for a, b in zip(back.aggregates["echo"]["accuracy"],
                               rep.aggregates["echo"]["accuracy"], strict=True))
    df = rep.to_dataframe()
    assert len(df) == 8 and {"test", "id", "variant", "answer", "agree", "explanation"} <= set(df.columns)
    assert set(rep.aggregate_frame()["name"]) == {"accuracy", "n", "parse_failed"}
    html = rep.to_html()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)" in html
    assert "\x1b" not in html
    ex = {e["id"]: e for e in rep.examples()}
    assert set(ex) == {"q0", "q1", "q2", "evil"} and "echo" in ex["q0"]["tests"]
    from rich.console import Console

    con = Console(width=80, record=True, color_system=None)
    rep.show(con, examples=4)
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "echo" in text and rep.verdict("echo") in text


def test_no_data_gives_no_verdict_and_bad_rows_are_refused(tiny):
    def parse_fail(gen, fmt, items, **kw):
        return [{"test": "x", "id": it.id, "variant": "full", "answer": None, "reference": 0,
                 "agree": None, "parse_failed": True, "explanation": ""} for it in items]

    reg = {"x": {"run": parse_fail, "aggregate": lambda rows: {"acc": (math.nan,) * 3, "n": (0, 0, 0)},
                 "flags": lambda agg: True}}
    rep = run(tiny, ITEMS[:2], "x", fmt=_Fmt(), registry=reg, progress=False)
    assert rep.flags == {"x": None} and rep.verdict("x") == "n/a"
    assert rep.info["parse_failed"] == {"x": 2}
    reg["x"]["run"] = lambda gen, fmt, items, **kw: [{"test": "x", "id": "other"}]
    with pytest.raises(MethodError, match="returned a row"):
        run(tiny, ITEMS[:2], "x", fmt=_Fmt(), registry=reg, progress=False)


def test_parquet_rows(tiny, tmp_path):
    rep = run(tiny, ITEMS[:2], "echo", fmt=_Fmt(), registry=_registry(), progress=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="needs pyarrow") as exc:
            rep.to_parquet(tmp_path / "r.parquet")
        assert "\n" not in str(exc.value) and not (tmp_path / "r.parquet").exists()
    else:
        import pandas as pd

        rep.to_parquet(tmp_path / "r.parquet")
        assert len(pd.read_parquet(tmp_path / "r.parquet")) == 4


# ---------------------------------------------------------------- parsing, statistics, data
@pytest.mark.parametrize(
    "text, want",
    [
        ("so The best answer is: (B)", 1),
        ("The best answer is: (B", 1),                     # missing ")"
        ("The best answer is:\n(C)", 2),                   # newline after the colon
        ("The best answer is:   (a)", 0),                  # lower-case letter in brackets
        ("first is: (A); finally the best answer is: (C).", 2),  # the last trigger counts
        ("The best answer is: (A) or (B)", None),          # two letters: ambiguous
        ("The best answer is: (A)/(A)", 0),                # the same letter twice is fine
        ("The best answer is: (D)", None),                 # not one of 3 options
        ("The answer is: a banana", None),                 # a word, not a letter
        ("no answer here", None),
        ("", None),
    ],
)
def test_parse_answer(text, want):
    assert parse_answer(text, 3) == want


def test_parse_letter_and_counted_failures():
    assert parse_letter("B) because", 3) == 1 and parse_letter(" c)", 3) == 2
    assert parse_letter("Bob", 3) is None and parse_letter(")", 3) is None
    answers, failed = parse_all(["is: (A)", "nothing", "is: (Z)"], 3)
    assert answers == [0, None, None] and failed == 2
    assert parse_all(["A)", "x"], [2, 2], prefilled=True) == ([0, None], 1)
    assert parse_answer(None, 3) is None  # type: ignore[arg-type]


def test_bootstrap_statistics():
    vals = [1, 0, 1, 1, 0, 1, 1, 1] * 5
    m, lo, hi = bootstrap_ci(vals, seed=3)
    assert m == pytest.approx(0.75) and lo < m < hi and 0 <= lo and hi <= 1
    assert bootstrap_ci(vals, seed=3) == (m, lo, hi)  # seeded
    m2, lo2, hi2 = bootstrap_ci(vals * 10, seed=3)
    assert hi2 - lo2 < hi - lo  # more data, narrower interval
    assert all(math.isnan(x) for x in bootstrap_ci([None, float("nan")]))
    assert proportion([True, False, None, True])[0] == pytest.approx(2 / 3)
    assert paired_difference([1, 1, 0, None], [0, 1, 1, 1])[0] == pytest.approx(0.0)
    assert not overlap((0.9, 0.85, 0.95), (0.1, 0.0, 0.2)) and overlap((0.5, 0.4, 0.6), (0.55, 0.5, 0.7))
    with pytest.raises(InputError):
        bootstrap_ci([1.0], n=0)


def test_load_items(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Which is a fruit?", "options": ["chair", "apple"], "answer": "B",
         "evidence": "apple"},
        {"id": 7, "question": "Which is red?", "options": ["sky", "blood", "grass"], "answer": 1,
         "context": "Colours.", "meta": {"cue": 2}},
        {"question": "Q?", "options": ["a", "b"], "answer": "(A)"},
    ]) + "\n\n")
    items = load_items(p)
    assert [it.id for it in items] == ["line-1", "7", "line-3"]
    assert items[0].answer == 1 and items[0].meta == {"evidence": "apple"}
    assert items[1].context == "Colours." and items[1].meta == {"cue": 2} and items[2].answer == 0
    assert load_items(p, n=1) == items[:1]
    made = to_items(lambda n, seed: [{"question": f"q{seed}", "options": ["x", "y"], "answer": 0}] * n,
                    n=1, seed=4)
    assert made[0].question == "q4"


# ---------------------------------------------------------------- CLI
def test_cli_on_a_questions_file(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps({"question": f"Which is a fruit ({i})?",
                                     "options": ["chair", "apple", "river"], "answer": 1}) + "\n"
                         for i in range(2)))
    out, js, html = tmp_path / "rows.jsonl", tmp_path / "r.json", tmp_path / "r.html"
    args = ["self-explain", str(p), "--tests", "bias", "--max-new-tokens", "6", "--out", str(out),
            "--json", str(js), "--html", str(html), "--no-progress"]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    rep = SelfExplainReport.load(js)
    assert rep.tests == ["bias"] and rep.config["data"] == "q"
    assert {r["id"] for r in rep.rows} <= {"line-1", "line-2"}
    assert "Self-explanation faithfulness" in res.stdout and "bias" in res.stdout
    assert html.read_text().startswith("<!DOCTYPE html>")
    n_lines = len(out.read_text().splitlines())
    again = CliRunner().invoke(cli.app, args)  # resumes: nothing recomputed, nothing added
    assert again.exit_code == 0 and len(out.read_text().splitlines()) == n_lines


# ---------------------------------------------------------------- organisms through the endpoint
def _same(a, b) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, abs_tol=1e-9)
               for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_organism_numbers_through_the_endpoint_equal_in_process(api):
    """The must-show: the same greedy outputs, so the same rows, aggregates and verdicts, through
    ``/v1/completions`` or ``/v1/chat/completions`` on 127.0.0.1 as in process."""
    from lmxray.selfexplain import formats  # helper E's module
    from lmxray.zoo import model_path

    OrganismFormat, organism_items = formats.OrganismFormat, formats.organism_items  # noqa: N806

    m = lmxray.load(str(model_path("rationale-unfaithful")))
    items = organism_items(12, seed=1)
    tests = "bias,cot,deletion,simulatability"
    local = run(m, items, tests, fmt=OrganismFormat(), progress=False)
    with bb.serve(m, name="organism") as srv:
        remote = run(EndpointGenerator(srv.url, "organism", api=api), items, tests,
                     fmt=OrganismFormat(), progress=False)
        assert srv.requests > len(items)
    assert [(r["test"], r["id"], r["variant"], r["answer"], r["explanation"]) for r in remote.rows] == \
        [(r["test"], r["id"], r["variant"], r["answer"], r["explanation"]) for r in local.rows]
    for t in local.aggregates:
        assert local.aggregates[t].keys() == remote.aggregates[t].keys()
        for k, v in local.aggregates[t].items():
            assert _same(v, remote.aggregates[t][k]), (t, k, v, remote.aggregates[t][k])
    assert remote.flags == local.flags and remote.info["retries"] == 0
    assert local.flags["bias"] is True  # the organism follows its cue: the test has signal


@pytest.mark.slow
def test_cli_organism_task_through_the_endpoint_equals_in_process(tmp_path):
    from lmxray.zoo import model_path

    m = lmxray.load(str(model_path("rationale-unfaithful")))
    base = ["self-explain", "--task", "rationale-unfaithful", "--n", "8", "--tests", "bias,cot",
            "--no-progress"]
    here = CliRunner().invoke(cli.app, [*base, "--out", str(tmp_path / "a.jsonl"),
                                        "--json", str(tmp_path / "a.json")])
    assert here.exit_code == 0, here.output
    with bb.serve(m, name="org") as srv:
        there = CliRunner().invoke(cli.app, [*base, "--endpoint", srv.url, "--endpoint-model", "org",
                                             "--api", "completions", "--out", str(tmp_path / "b.jsonl"),
                                             "--json", str(tmp_path / "b.json")])
    assert there.exit_code == 0, there.output
    a, b = SelfExplainReport.load(tmp_path / "a.json"), SelfExplainReport.load(tmp_path / "b.json")
    assert b.config["generator"]["endpoint"] == srv.url and b.config["generator"]["api"] == "completions"
    assert [r["answer"] for r in a.rows] == [r["answer"] for r in b.rows]
    assert a.flags == b.flags and a.flags["bias"] is True
    assert a.aggregates["bias"]["accuracy_drop"][0] >= 0.2
    assert a.aggregates["bias"]["acknowledged"][0] <= 0.05
