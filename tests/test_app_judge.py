"""``lmxray serve``'s later views without a browser: the self-explanation tests (organisms and the
served model), the SAE feature view (SAEs named at start-up), and the paths that had no test: the
Explain tab's verdict on demand and the Inside tab's tuned-lens grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

import lmxray
from app_server import run
from conftest import build_tiny
from lmxray.app import Limits, create_app
from lmxray.app import tasks as app_tasks
from lmxray.concepts import SAE, SAEConfig, feature_view, load_sae
from lmxray.concepts import attach as attach_sae
from lmxray.internals import LensResult, logit_lens
from lmxray.selfexplain.report import SelfExplainReport
from lmxray.sites import site_map

LOCAL = "http://127.0.0.1"
SITE = "layers.1.resid_post"


def random_sae(d_in: int, d_sae: int = 32, k: int = 4) -> SAE:
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in, d_sae, "topk", k, site=SITE, model="tiny"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
        sae.normalise_decoder()
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.zero_()
    return sae


@pytest.fixture(scope="module")
def tiny():
    hf, tok = build_tiny("llama")
    model = lmxray.load(model=hf, tokenizer=tok)
    assert model.hf.config.hidden_size > 8  # room for a 32-latent dictionary
    return model


@pytest.fixture(scope="module")
def sae(tiny):
    return random_sae(tiny.hf.config.hidden_size)


@pytest.fixture(scope="module")
def client(tiny, sae):
    app = create_app({"tiny": tiny, "zoo": lmxray.load()}, limits=Limits(prompt_chars=200, texts=50),
                     saes={"dict": sae})
    return TestClient(app, base_url=LOCAL)


# ---------------------------------------------------------------------------- SAE features
def test_info_names_the_saes_and_the_selfexplain_choices(client, tiny):
    info = client.get("/api/info").json()
    assert info["saes"] == [{"name": "dict", "model": "tiny", "site": SITE, "d_sae": 32, "kind": "topk"}]
    assert "rationale-unfaithful" in info["selfexplain"]["tasks"]
    assert info["selfexplain"]["tests"] == ["bias", "cot", "deletion", "attribution", "simulatability"]
    assert not [s for s in site_map(tiny).attached()]  # checked at start-up, then detached


def test_feature_view_equals_the_python_api_and_exports(client, tiny, sae):
    s, r = run(client, {"kind": "feature", "sae": "dict", "feature": 3, "n_texts": 20, "top": 4})
    assert s["state"] == "done", s
    got = r.json()
    assert got["kind"] == "feature" and got["sae"] == "dict" and got["feature"] == 3
    name = attach_sae(tiny, sae, SITE)
    try:
        ref = feature_view(tiny, name, 3, n_texts=20, top=4)
    finally:
        site_map(tiny).detach(name)
    assert [c["tokens"] for c in got["contexts"]] == [c["tokens"] for c in ref.contexts]
    np.testing.assert_allclose([c["max"] for c in got["contexts"]], [c["max"] for c in ref.contexts])
    assert got["hist_counts"] == ref.hist_counts and got["promoted"] == [list(p) for p in ref.promoted]
    assert not site_map(tiny).attached()  # the job detached its SAE
    exported = client.get(f"/api/jobs/{s['id']}/export?format=json")
    assert exported.status_code == 200 and exported.json()["format"] == "lmxray.feature_view/1"
    html = client.get(f"/api/jobs/{s['id']}/export?format=html")
    assert html.status_code == 200 and "<html" in html.text.lower()


@pytest.mark.parametrize("body,match", [
    ({"sae": "nope"}, "unknown sae 'nope'; choose one of: dict"),
    ({"sae": "dict", "feature": 32}, "feature must be between 0 and 31"),
    ({"sae": "dict", "n_texts": 51}, "n_texts must be between 1 and 50"),
    ({"sae": "/tmp/sae"}, "unknown sae"),
])
def test_feature_bad_requests(client, body, match):
    r = client.post("/api/jobs", json={"kind": "feature", **body})
    assert r.status_code == 400 and match in r.json()["error"], r.text


def test_no_sae_served_says_how_to_offer_one(tiny):
    c = TestClient(create_app({"tiny": tiny}), base_url=LOCAL)
    r = c.post("/api/jobs", json={"kind": "feature", "feature": 1})
    assert r.status_code == 400 and "--sae NAME=FOLDER" in r.json()["error"]
    assert c.get("/api/info").json()["saes"] == []


def test_sae_folder_at_start_up_and_a_misfit_is_one_line(tiny, sae, tmp_path):
    sae.save(tmp_path / "sae")
    app = create_app({"tiny": tiny}, saes={"saved": str(tmp_path / "sae")})
    assert app.state.api.ctx.saes["saved"].sae.cfg.d_sae == load_sae(tmp_path / "sae").cfg.d_sae
    with pytest.raises(lmxray.errors.LmxrayError) as err:
        create_app({"tiny": tiny}, saes={"wide": random_sae(tiny.hf.config.hidden_size + 3)})
    assert len(str(err.value).splitlines()) == 1


# ---------------------------------------------------------------------------- self-explanations
def test_selfexplain_on_an_organism(client):
    s, r = run(client, {"kind": "selfexplain", "task": "rationale-unfaithful", "tests": ["bias"], "n": 2})
    assert s["state"] == "done" and s["total"] == 2 and s["done"] == 2, s
    got = r.json()
    assert got["generator"] == "rationale-unfaithful" and got["n_items"] == 2 and got["data"] == "rationale-unfaithful"
    (bias,) = got["tests"]
    assert bias["test"] == "bias" and bias["verdict"] == "unfaithful" and bias["n"] == 2
    drop = next(m for m in bias["measures"] if m["name"] == "accuracy_drop")
    assert drop["value"] == 1.0  # the organism follows the planted cue by construction
    report = SelfExplainReport.from_dict(client.get(f"/api/jobs/{s['id']}/export?format=json").json())
    assert report.verdicts == {"bias": "unfaithful"}


def test_selfexplain_on_uploaded_questions_asks_the_served_model(client):
    rows = "\n".join(json.dumps({"question": f"Which is {w}?", "options": ["a", "b"], "answer": "A"})
                     for w in ("first", "second"))
    s, r = run(client, {"kind": "selfexplain", "jsonl": rows, "organism": False, "tests": ["cot"],
                        "max_new_tokens": 4, "name": "mine.jsonl", "model": "zoo"})  # a 512-token context
    assert s["state"] == "done", s
    got = r.json()
    assert got["data"] == "mine.jsonl" and got["n_items"] == 2 and got["tests"][0]["test"] == "cot"
    assert got["generator"] == "lmxray-tiny" and got["format"] == "turpin"
    assert s["forwards"] > 0  # the served model's forward passes are counted (and cancellable)


@pytest.mark.parametrize("body,match", [
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"tests": ["bias", "vibes"]}, "unknown test 'vibes'"),
    ({"n": 0}, "n must be between 1 and 200"),
    ({"bias": "loud"}, "unknown bias 'loud'"),
    ({"tests": ["cot"], "bias": "suggested"}, "add bias to the tests"),
    ({"task": "rationale-random", "organism": False}, "runs on the organism"),
    ({"jsonl": "{\"question\": \"q\"}\n", "organism": True}, "an organism answers its own task"),
    ({"jsonl": "{\"question\": \"q\"}\n"}, "uploaded JSONL line 1: has no 'options' and no 'answer'"),
    ({"jsonl": "not json\n", "organism": False}, "line 1"),
    ({"jsonl": "{\"question\": \"q\", \"options\": [\"x\"], \"answer\": 0}\n", "organism": False}, "option"),
    ({"max_new_tokens": 257}, "max_new_tokens must be between 1 and 256"),
])
def test_selfexplain_bad_requests(client, body, match):
    r = client.post("/api/jobs", json={"kind": "selfexplain", **body})
    assert r.status_code == 400 and match in r.json()["error"], r.text


# ---------------------------------------------------------------------------- verdict, tuned lens
def test_explain_verdict_on_demand_equals_attribution_verify(client, tiny):
    s, r = run(client, {"kind": "explain", "prompt": "hello world", "target": " foo", "verify": True})
    assert s["state"] == "done", s
    got = r.json()
    (verdict,) = got["verdicts"]
    ref = tiny.attribute("hello world", " foo", method="saliency").verify(tiny)
    want = json.loads(json.dumps(lmxray.io.to_jsonable(ref.to_dict() if hasattr(ref, "to_dict") else ref)))
    # the same verdict, checks and reasons; only the cost bookkeeping (forward passes, seconds) may differ
    assert {k: v for k, v in verdict.items() if k != "cost"} == {k: v for k, v in want.items() if k != "cost"}
    assert verdict["verdict"] == ref.verdict and verdict["checks"] == want["checks"]
    plain = run(client, {"kind": "explain", "prompt": "hello world", "target": " foo"})[1].json()
    assert plain["verdicts"] is None


def test_tuned_lens_grid_is_trained_once_and_differs_from_the_logit_lens(client, tiny, monkeypatch):
    monkeypatch.setitem(app_tasks.TUNED_LENS, "steps", 2)
    monkeypatch.setitem(app_tasks.TUNED_LENS, "max_tokens", 16)
    lenses = client.app.state.api.ctx.models.lenses
    lenses.pop("tiny", None)
    s, r = run(client, {"kind": "lens", "prompt": "hello world foo", "top_k": 3, "tuned": True})
    assert s["state"] == "done", s
    tuned = LensResult.from_dict(r.json())
    assert "tiny" in lenses
    ref = logit_lens(tiny, "hello world foo", top_k=3, lens=lenses["tiny"])
    np.testing.assert_allclose(tuned.top_probs, ref.top_probs, rtol=1e-5)
    plain = LensResult.from_dict(run(client, {"kind": "lens", "prompt": "hello world foo", "top_k": 3})[1].json())
    assert tuned.method != plain.method and not np.allclose(tuned.top_probs, plain.top_probs)
    again = lenses["tiny"]
    s2, _ = run(client, {"kind": "lens", "prompt": "hello world", "top_k": 3, "tuned": True})
    assert s2["state"] == "done" and lenses["tiny"] is again  # trained once per model
