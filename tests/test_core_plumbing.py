"""The core after the plumbing refactor: method parameters declared once, old files still load,
one permission rule for every artefact, plain piped output with numbers, <eos> said, OOM back-off,
offline fail-fast, resumable Ctrl-C."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import lmxray
from lmxray import cli
from lmxray.attribution import method_specs, register_method
from lmxray.attribution.gradient import ConvergenceWarning
from lmxray.cli._common import LmxrayGroup, resumable
from lmxray.errors import ModelLoadError
from lmxray.hooks import ActivationCache
from lmxray.result import Attribution

FIXTURES = Path(__file__).parent / "fixtures"
PROMPT = "The capital of France is"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    return lmxray.load()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


# ------------------------------------------------------------------ parameters declared once
def test_method_params_are_the_signature_defaults():
    specs = method_specs()
    ig = specs["integrated_gradients"]
    assert ig.params == {"n_steps": 128, "baseline": "auto", "integration": "gausslegendre",
                         "interpolate": "all", "reduce": "sum", "warn_delta": 0.01}
    assert specs["kernel_shap"].params["n_samples"] == 256
    assert specs["shapley_sampling"].params["n_samples"] == 25
    assert all(isinstance(s.params, dict) for s in specs.values())


def test_cli_help_defaults_are_the_apis():
    import inspect

    from lmxray.attribution import api
    from lmxray.cli import _common

    assert _common.DEFAULT_NEW_TOKENS == api.DEFAULT_NEW_TOKENS
    assert _common.DEFAULT_METHOD == inspect.signature(api.attribute).parameters["method"].default
    assert inspect.signature(lmxray.blackbox.BlackBoxModel.attribute).parameters["method"].default in (
        method_specs()
    )


def test_register_method_refuses_a_parameter_without_default():
    with pytest.raises(ValueError, match="has no default"):

        @register_method("lmxray_test_no_default", description="x", kind="control")
        def _m(model, requests, ctx, *, k):  # pragma: no cover - never registered
            return []

    assert "lmxray_test_no_default" not in method_specs()


def test_methods_verbose_lists_every_parameter_with_its_default():
    res = invoke("methods", "--verbose")
    assert res.exit_code == 0, res.output
    for spec in method_specs().values():
        assert spec.name in res.stdout
        for name, default in spec.params.items():
            assert name in res.stdout and f"default {default!r}" in res.stdout, (spec.name, name)
    plain = invoke("methods")
    assert "n_steps" not in plain.stdout and "integrated_gradients" in plain.stdout


def test_ig_default_converges_on_the_default_model_and_the_cli_uses_it(tiny, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        a = tiny.attribute(PROMPT, target=" Paris")  # the method's default n_steps
    assert a.info["n_steps"] == 128
    assert max(a.info["convergence_delta_relative"]) < 0.01
    out = tmp_path / "a.json"
    res = invoke("explain", PROMPT, "--target", " Paris", "--json", out)
    assert res.exit_code == 0, res.output
    b = Attribution.load(out)
    assert b.info["n_steps"] == 128
    np.testing.assert_array_equal(a.scores, b.scores)


# ------------------------------------------------------------------ old files still load
@pytest.mark.parametrize("name", ["attribution_v1_orig.json", "attribution_v1_orig_ig.json"])
def test_attribution_written_by_the_old_code_loads(name):
    raw = json.loads((FIXTURES / name).read_text())
    a = Attribution.load(FIXTURES / name)
    assert raw["format"] == "lmxray.attribution/1"
    assert a.source_tokens == raw["source_tokens"] and a.method == raw["method"]
    assert a.scores.shape == (len(a.target_tokens), len(a.source_tokens))
    assert a.to_html().startswith("<!DOCTYPE html>") or "<html" in a.to_html()


def test_old_occlusion_fixture_equals_a_fresh_run(tiny):
    """Behaviour did not change: the same call gives the scores the old code saved."""
    old = Attribution.load(FIXTURES / "attribution_v1_orig.json")
    new = tiny.attribute(PROMPT, target=" Paris", method="occlusion")
    assert new.source_tokens == old.source_tokens
    np.testing.assert_allclose(new.scores, old.scores, atol=1e-5, equal_nan=True)


def test_activation_cache_written_by_the_old_code_loads(tiny):
    c = ActivationCache.load(FIXTURES / "cache_v1_orig.safetensors")
    assert c.model_name == "lmxray-tiny" and c.n_layers == 4  # old metadata: plain strings
    assert c.tokens == [["<bos>", "The", " capital", " of", " France", " is"]]
    fresh = tiny.run(PROMPT, cache=list(c))
    for k in c:
        torch.testing.assert_close(c[k], fresh[k])


def test_activation_cache_round_trip(tiny, tmp_path):
    c = tiny.run(PROMPT, cache=["layers.0.resid_post"])
    path = c.save(tmp_path / "c.safetensors")
    d = ActivationCache.load(path)
    assert (d.model_name, d.n_layers, d.tokens) == (c.model_name, c.n_layers, c.tokens)
    torch.testing.assert_close(d["layers.0.resid_post"], c["layers.0.resid_post"])
    assert d.to_dict()["sites"] == {"layers.0.resid_post": list(c["layers.0.resid_post"].shape)}
    assert d._repr_html_() is None  # no HTML view: notebooks fall back to the repr
    from rich.console import Console

    con = Console(record=True, width=100)
    con.print(d)
    assert "ActivationCache(1 sites" in con.export_text()


# ------------------------------------------------------------------ one permission rule
def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_artefact_gets_the_same_permissions(tiny, tmp_path, umask):
    old = os.umask(umask)
    try:
        js, page, png = tmp_path / "a.json", tmp_path / "a.html", tmp_path / "lens.png"
        res = invoke("explain", PROMPT, "-t", " Paris", "--n-steps", "4", "--json", js, "--html", page)
        assert res.exit_code == 0, res.output
        res = invoke("lens", PROMPT, "--png", png)
        assert res.exit_code == 0, res.output
        a = Attribution.load(js)
        api_png, api_json = tmp_path / "b.png", tmp_path / "b.json"
        a.to_png(api_png)
        a.save(api_json)
        cache = tiny.run(PROMPT, cache=["layers.0.resid_post"]).save(tmp_path / "c.safetensors")
        want = 0o666 & ~umask
        modes = {p.name: oct(_mode(p)) for p in (js, page, png, api_png, api_json, cache)}
        assert set(modes.values()) == {oct(want)}, modes
        assert api_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        os.umask(old)


# ------------------------------------------------------------------ plain output, <eos>
def test_piped_explain_prints_every_score(tmp_path):
    js = tmp_path / "a.json"
    res = invoke("explain", PROMPT, "--target", " Paris is", "--n-steps", "8", "--json", js)
    assert res.exit_code == 0, res.output
    a = Attribution.load(js)
    out = res.stdout
    assert "step 1  target ·Paris" in out and "step 2  target ·is" in out and "Σ all steps" in out
    from lmxray.render._view import format_value

    for t in range(len(a.target_tokens)):
        for s in range(a.prompt_length + t):
            assert format_value(a.scores[t, s]) in out, (t, s)
    assert format_value(a.target_scores[0]) in out


def test_generation_that_stops_at_eos_is_said(tiny, tmp_path):
    a = tiny.attribute(PROMPT, max_new_tokens=8, method="saliency")
    assert len(a.target_tokens) < 8  # the default model ends " Paris" with <eos>
    assert a.info["stopped_at_eos"] is True and a.info["requested_new_tokens"] == 8
    b = tiny.attribute(PROMPT, max_new_tokens=1, method="saliency")
    assert b.info["stopped_at_eos"] is False and b.info["requested_new_tokens"] == 1
    assert "stopped_at_eos" not in tiny.attribute(PROMPT, target=" Paris", method="saliency").info
    res = invoke("explain", PROMPT, "--max-new-tokens", "3", "--method", "saliency")
    assert res.exit_code == 0, res.output
    assert f"ended the text (<eos>) after {len(a.target_tokens)} of the 3 requested" in res.stdout
    from rich.console import Console

    con = Console(record=True, width=120, force_terminal=True)
    a.show(console=con)
    assert "of the 8 requested new tokens" in con.export_text()


# ------------------------------------------------------------------ one budget, OOM back-off
def test_out_of_memory_halves_the_chunk_and_is_recorded(tiny, monkeypatch):
    ref = tiny.attribute(PROMPT, target=" Paris", n_steps=16)
    forward = type(tiny).forward
    seen = []

    def small_memory(self, *args, **kwargs):
        emb = kwargs.get("inputs_embeds")
        rows = (emb if emb is not None else kwargs["input_ids"]).shape[0]
        seen.append(rows)
        if rows > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "forward", small_memory)
    a = tiny.attribute(PROMPT, target=" Paris", n_steps=16)
    assert a.info["oom_backoff"][0] == [16, 8] and [8, 4] in a.info["oom_backoff"]
    assert max(r for r in seen if r <= 4) == 4
    np.testing.assert_allclose(a.scores, ref.scores, rtol=1e-4, atol=1e-6, equal_nan=True)
    o = tiny.attribute(PROMPT, target=" Paris", method="occlusion", internal_batch_size=8)
    assert "oom_backoff" in o.info
    np.testing.assert_allclose(
        o.scores, tiny.attribute(PROMPT, target=" Paris", method="occlusion").scores,
        atol=1e-5, equal_nan=True,
    )


def test_no_backoff_no_key(tiny):
    assert "oom_backoff" not in tiny.attribute(PROMPT, target=" Paris", method="saliency").info


# ------------------------------------------------------------------ offline, tokenizers
def test_wrong_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="not a local folder") as info:
        lmxray.load("no-such-org/no-such-model")
    assert time.time() - t0 < 10 and "\n" not in str(info.value)


def test_embedded_name_resolves_to_the_embedded_tokenizer(monkeypatch):
    from lmxray.blackbox import from_callable
    from lmxray.model import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer("lmxray-tiny")
    assert tok.encode(" Paris", add_special_tokens=False) == lmxray.load().encode_target(" Paris")
    bb = from_callable(lambda pairs: [[-1.0] * len(c) for _, c in pairs], "lmxray-tiny")
    a = bb.attribute("The capital of", target=" France", method="occlusion")
    assert a.source_tokens[0] == "<bos>"
    assert lmxray.load("lmxray-tiny").name == "lmxray-tiny"


# ------------------------------------------------------------------ Ctrl-C
def _app(resumes: bool) -> typer.Typer:
    app = typer.Typer(cls=LmxrayGroup)

    @app.command()
    def work() -> None:
        with resumable(enabled=resumes, note="checkpoint in out/"):
            raise KeyboardInterrupt

    @app.command()
    def other() -> None:
        raise KeyboardInterrupt

    return app


@pytest.mark.parametrize("resumes", [True, False])
def test_ctrl_c_says_how_to_resume(resumes):
    res = runner.invoke(_app(resumes), ["work"])
    assert res.exit_code == 130
    line = res.stderr.strip()
    if resumes:
        assert line == "lmxray: interrupted; rerun the same command to resume (checkpoint in out/)"
    else:
        assert line == "lmxray: interrupted"
    plain = runner.invoke(_app(resumes), ["other"])
    assert plain.exit_code == 130 and plain.stderr.strip() == "lmxray: interrupted"


def test_choose_names_is_the_one_registry_check():
    from lmxray.errors import InputError, choose_names

    known = ["a", "b", "c"]
    assert choose_names("all", known, "method") == known
    assert choose_names(" b, a ,b,", known, "method") == ["b", "a"]
    assert choose_names(["c", "c"], known, "test") == ["c"]
    with pytest.raises(InputError, match=r"^no test chosen; give test names or 'all'$"):
        choose_names(" , ", known, "test")
    with pytest.raises(InputError, match=r"unknown method 'd'; choose from: a, b, c \(or 'all'\)"):
        choose_names("a,d", known, "method")
    with pytest.raises(InputError, match="none registered"):
        choose_names("x", [], "test")


def test_parse_jsonl_reads_text_as_read_jsonl_reads_files(tmp_path):
    from lmxray.errors import InputError
    from lmxray.io import parse_jsonl, read_jsonl

    text = '{"a": 1}\n\n{"a": 2}\n'
    (tmp_path / "r.jsonl").write_text(text, encoding="utf-8")
    assert parse_jsonl(text, source="upload") == read_jsonl(tmp_path / "r.jsonl") == [{"a": 1}, {"a": 2}]
    with pytest.raises(InputError, match=r"^upload line 2 is not JSON"):
        parse_jsonl('{"a": 1}\n{"a"\n', source="upload")
    with pytest.raises(InputError, match=r"^upload line 1 is not a JSON object"):
        parse_jsonl("[1]\n", source="upload")
    with pytest.raises(InputError, match=r"^upload holds no examples rows"):
        parse_jsonl(" \n", source="upload", what="examples")
