"""Black-box scorers: perturbation methods through a real OpenAI-compatible HTTP server on
127.0.0.1 give the local numbers; protocol, errors and bad input."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import numpy as np
import pytest

import lmxray
import lmxray.blackbox as bb
from conftest import build_tiny
from lmxray.errors import InputError, MethodError, ModelLoadError

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave"]
TARGETS = [" Paris. The", " a drink"]


@pytest.fixture(scope="module")
def local():
    """The zoo model when it is installed, else a tiny random GPT-2."""
    try:
        return lmxray.load()
    except (ModelLoadError, InputError):
        hf, tok = build_tiny("gpt2")
        return lmxray.load(model=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def server(local):
    with bb.serve(local, name="served") as srv:
        yield srv


@pytest.fixture(scope="module")
def remote(server, local):
    return bb.connect(server.url, local.tokenizer, model="served", batch_size=16)


def _post(url: str, body: object, path: str = "/v1/completions", raw: bytes | None = None):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null")
    conn.close()
    return out


def test_server_binds_loopback_only(server, local):
    assert urlparse(server.url).hostname == "127.0.0.1"
    with pytest.raises(InputError, match="loopback"):
        bb.serve(local, host="0.0.0.0")


@pytest.mark.parametrize(
    "method, kw",
    [("occlusion", {}), ("occlusion", {"replace": "baseline"}),
     ("shapley_sampling", {"n_samples": 4}), ("kernel_shap", {"n_samples": 32}),
     ("lime", {"n_samples": 32}),
     pytest.param("kernel_shap", {"features": "word"}, marks=pytest.mark.slow)],  # 256 samples
)
def test_blackbox_equals_local(local, remote, server, method, kw):
    before = server.requests
    a = local.attribute(PROMPTS, target=TARGETS, method=method, **kw)
    b = remote.attribute(PROMPTS, target=TARGETS, method=method, **kw)
    assert server.requests > before  # it really went over HTTP
    for x, y in zip(a, b, strict=True):
        assert x.source_tokens == y.source_tokens and x.target_tokens == y.target_tokens
        # the server scores each request in its own batch (other padding, no prefix packing):
        # float32 rounding of log-softmax over ~3350 logits, up to ~1.3e-5 on the zoo model
        np.testing.assert_allclose(y.scores, x.scores, atol=5e-5, equal_nan=True)
        np.testing.assert_allclose(y.target_scores, x.target_scores, atol=5e-5)
        assert y.model_name == "served" and y.method == method


def test_foil_and_prob_target(local, remote):
    t, f = local.encode_target(" Paris"), local.encode_target(" Rome")
    foil = " Rome" if len(t) == len(f) else local.tokenizer.decode(t[::-1])
    for fn in ("logprob", "prob"):
        a = local.attribute(PROMPTS[0], target=" Paris", foil=foil, method="occlusion", target_fn=fn)
        b = remote.attribute(PROMPTS[0], target=" Paris", foil=foil, method="occlusion", target_fn=fn)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)


def test_generation_through_the_server(local, remote):
    a = local.attribute(PROMPTS[0], max_new_tokens=3, method="occlusion")
    b = remote.attribute(PROMPTS[0], max_new_tokens=3, method="occlusion")
    assert a.target_tokens == b.target_tokens and b.info["generated"] is True
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)


def test_concurrent_requests_give_the_same_numbers(local, server):
    r = bb.connect(server.url, local.tokenizer, batch_size=4, concurrency=3)
    a = local.attribute(PROMPTS[1], target=TARGETS[1], method="kernel_shap", n_samples=16)
    b = r.attribute(PROMPTS[1], target=TARGETS[1], method="kernel_shap", n_samples=16)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, equal_nan=True)
    assert r.scorer.calls > 3


def test_completions_protocol(server, local):
    status, out = _post(server.url, {"prompt": "The capital", "echo": True, "logprobs": 2,
                                     "max_tokens": 2, "temperature": 0})
    assert status == 200 and out["object"] == "text_completion"
    ch = out["choices"][0]
    n_prompt = len(local.encode("The capital"))
    lp = ch["logprobs"]
    n_gen = out["usage"]["completion_tokens"]  # 2, or fewer when greedy decoding hits <eos>
    assert n_gen == 2 if ch["finish_reason"] == "length" else (ch["finish_reason"] == "stop" and n_gen < 2)
    assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == n_prompt + n_gen
    assert all(x <= 0 for x in lp["token_logprobs"][1:])
    assert lp["top_logprobs"][0] is None and all(len(d) <= 2 for d in lp["top_logprobs"][1:])
    assert len(lp["tokens"]) == len(lp["text_offset"]) == n_prompt + n_gen
    assert out["usage"]["prompt_tokens"] == n_prompt
    # the echoed log-probs are the local model's
    ids = local.encode("The capital")
    ref = local.logits(ids).log_softmax(-1)
    np.testing.assert_allclose(
        lp["token_logprobs"][1:n_prompt], [float(ref[i, ids[i + 1]]) for i in range(n_prompt - 1)],
        atol=1e-5,
    )
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/v1/models")
    models = json.loads(conn.getresponse().read())
    conn.close()
    assert models["data"][0]["id"] == "served"


@pytest.mark.parametrize(
    "body, status, match",
    [
        ({"prompt": "x", "temperature": 0.7}, 400, "greedily"),
        ({"prompt": "x", "model": "other"}, 404, "unknown model"),
        ({"prompt": []}, 400, "prompt is missing"),
        ({"prompt": [[1, 10**9]]}, 400, "token ids must be"),
        ({"prompt": "x", "logprobs": 9}, 400, "logprobs must be"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens must be"),
        (None, 400, "not valid JSON"),
    ],
)
def test_server_rejects_bad_requests(server, body, status, match):
    raw = b"{not json" if body is None else None
    got, out = _post(server.url, body, raw=raw)
    assert got == status and match in out["error"]["message"]


def test_unknown_path_and_oversized_body(server):
    assert _post(server.url, {}, path="/v1/chat")[0] == 404
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(1 << 30))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


# ---------------------------------------------------------------- client errors
def test_methods_that_need_weights_are_refused(remote):
    for method in ("saliency", "integrated_gradients", "attention"):
        with pytest.raises(MethodError, match="needs the model's weights") as exc:
            remote.attribute(PROMPTS[0], target=TARGETS[0], method=method)
        assert "\n" not in str(exc.value)
    with pytest.raises(MethodError, match="needs the model's weights"):
        lmxray.attribution.attribute(remote, PROMPTS[0], target=TARGETS[0], method="saliency")


def test_logit_target_is_refused(remote):
    with pytest.raises(MethodError, match="log-probabilities only"):
        remote.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion", target_fn="logit")


def test_unreachable_server_and_bad_url(local):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    dead = bb.connect(f"http://127.0.0.1:{port}/v1", local.tokenizer, timeout=5)
    with pytest.raises(MethodError, match="cannot reach the scoring server") as exc:
        dead.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="endpoint URL"):
        bb.connect("ftp://127.0.0.1/v1", local.tokenizer)


def test_callable_scorer_is_checked(local):
    n = len(local.encode_target(TARGETS[0]))
    short = bb.from_callable(lambda pairs: [[-1.0] * (len(c) - 1) for _, c in pairs], local.tokenizer)
    with pytest.raises(MethodError, match="one per continuation token"):
        short.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    positive = bb.from_callable(lambda pairs: [[0.5] * len(c) for _, c in pairs], local.tokenizer)
    with pytest.raises(MethodError, match="not finite and <= 0"):
        positive.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    missing = bb.from_callable(lambda pairs: [], local.tokenizer)
    with pytest.raises(MethodError, match="one per pair"):
        missing.attribute(PROMPTS[0], target=TARGETS[0], method="occlusion")
    with pytest.raises(MethodError, match="cannot generate"):
        short.attribute(PROMPTS[0], max_new_tokens=2, method="occlusion")
    assert n >= 2


def test_local_scorer_is_a_scorer(local):
    from lmxray.attribution.base import Context
    from lmxray.targets import resolve_target_fn

    sc = bb.LocalScorer(local)
    assert isinstance(sc, bb.Scorer)
    wrapped = bb.BlackBoxModel(sc, local.tokenizer, name="wrapped")
    a = local.attribute(PROMPTS[0], target=TARGETS[0], method="lime", n_samples=16)
    b = wrapped.attribute(PROMPTS[0], target=TARGETS[0], method="lime", n_samples=16)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-6, equal_nan=True)
    ctx = Context(target_fn=resolve_target_fn("logprob"))
    assert len(sc.score([], ctx)) == 0
    with pytest.raises(InputError, match="score"):
        bb.BlackBoxModel(object(), local.tokenizer)


def test_post_json_sorts_failures(server):
    """The one HTTP transport: an HTTP error keeps its status and the body's gist; no server, or
    a non-JSON answer, is an HTTPFailure without status (reached or not)."""
    import socket

    from lmxray.blackbox.http import HTTPFailure, post_json

    with pytest.raises(HTTPFailure) as exc:
        post_json(server.url + "/chat", {}, timeout=10)
    assert exc.value.status == 404 and "\n" not in str(exc.value)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(HTTPFailure) as exc:
        post_json(f"http://127.0.0.1:{port}/v1/completions", {}, timeout=5)
    assert exc.value.status is None and not exc.value.reached and str(exc.value)
