"""Bad input for ``lmxray explain`` / ``methods`` / ``explain-endpoint`` / ``serve-completions``
and the attribution API: each is refused with one line (exit 2 on the CLI), nothing written."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from lmxray.errors import FormatError, InputError, MethodError, ModelLoadError

URL = "http://127.0.0.1:9/v1"  # nothing listens there; every case below fails before a request


def _write(name: str, data: bytes):
    def setup(tmp):
        (tmp / name).write_bytes(data)

    return setup


CLI_CASES: list[CliCase] = [
    # explain: outputs
    CliCase("explain-json-is-a-folder", ["explain", "hi", "--json", "{tmp}"], "is a directory"),
    CliCase("explain-no-such-folder", ["explain", "hi", "--json", "{tmp}/no/a.json"],
            "does not exist", outputs=["{tmp}/no/a.json"]),
    CliCase("explain-html-no-such-folder", ["explain", "hi", "--html", "{tmp}/no/a.html"],
            "does not exist", outputs=["{tmp}/no/a.html"]),
    CliCase("explain-both-to-stdout", ["explain", "hi", "--json", "-", "--html", "-"],
            "only one of --json and --html"),
    CliCase("explain-same-file-twice", ["explain", "hi", "--json", "{tmp}/a", "--html", "{tmp}/a"],
            "", outputs=["{tmp}/a"]),
    # explain: values
    CliCase("explain-empty-prompt", ["explain", ""], "prompt is empty"),
    CliCase("explain-blank-prompt", ["explain", "   "], "prompt is empty"),
    CliCase("explain-empty-target", ["explain", "hi", "--target", ""], "target is empty"),
    CliCase("explain-target-and-new-tokens", ["explain", "hi", "-t", " x", "-n", "2"],
            "either --target or --max-new-tokens"),
    CliCase("explain-foil-without-target", ["explain", "hi", "--foil", " y"], "--foil needs --target"),
    CliCase("explain-zero-new-tokens", ["explain", "hi", "-n", "0"], "--max-new-tokens"),
    CliCase("explain-negative-new-tokens", ["explain", "hi", "-n", "-3"], "--max-new-tokens"),
    CliCase("explain-zero-steps", ["explain", "hi", "--n-steps", "0"], "--n-steps"),
    CliCase("explain-unknown-method", ["explain", "hi", "--method", "nope"], "unknown method"),
    CliCase("explain-unknown-target-fn", ["explain", "hi", "--target-fn", "nope"], "--target-fn"),
    CliCase("explain-unknown-normalize", ["explain", "hi", "--normalize", "nope"], "--normalize"),
    CliCase("explain-zero-max-steps", ["explain", "hi", "--max-steps", "0"], "--max-steps"),
    CliCase("explain-empty-baseline", ["explain", "hi", "--baseline", " "], "--baseline is empty"),
    CliCase("explain-unknown-baseline", ["explain", "hi", "-t", " x", "--baseline", "nope"],
            "unknown baseline"),
    CliCase("explain-baseline-out-of-vocab", ["explain", "hi", "-t", " x", "--baseline", "999999"],
            "outside the vocabulary"),
    CliCase("explain-baseline-for-saliency", ["explain", "hi", "-t", " x", "--method", "saliency",
                                              "--baseline", "zero"], "does not take baseline"),
    CliCase("explain-foil-length", ["explain", "The capital of France is", "-t", " Paris",
                                    "--foil", " the capital city"], "same token length"),
    CliCase("explain-missing-model-folder", ["explain", "hi", "--model", "./no/such/model"],
            "does not exist"),
    CliCase("explain-model-is-a-file", ["explain", "hi", "--model", "{tmp}/m.bin"],
            "not a model folder", setup=_write("m.bin", b"x")),
    CliCase("explain-model-folder-without-config", ["explain", "hi", "--model", "{tmp}"],
            "no config.json"),
    CliCase("explain-offline-hub-id", ["explain", "hi", "--model", "no-such-org/no-such-model"],
            "HF_HUB_OFFLINE is set"),
    CliCase("explain-empty-model", ["explain", "hi", "--model", ""], "model name is empty"),
    CliCase("explain-unknown-option", ["explain", "hi", "--nope"], "No such option"),
    CliCase("explain-missing-prompt", ["explain"], "Missing argument"),
    # methods
    CliCase("methods-extra-argument", ["methods", "extra"], "unexpected extra argument"),
    CliCase("methods-unknown-option", ["methods", "--nope"], "No such option"),
    # explain-endpoint
    CliCase("endpoint-gradient-method", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                         "lmxray-tiny", "--method", "saliency"],
            "cannot run on a served model"),
    CliCase("endpoint-target-and-new-tokens", ["explain-endpoint", "hi", "--url", URL,
                                               "--tokenizer", "lmxray-tiny", "-t", " x", "-n", "2"],
            "either --target or --max-new-tokens"),
    CliCase("endpoint-foil-without-target", ["explain-endpoint", "hi", "--url", URL,
                                             "--tokenizer", "lmxray-tiny", "--foil", " y"],
            "--foil needs --target"),
    CliCase("endpoint-json-no-folder", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                        "lmxray-tiny", "--json", "{tmp}/no/a.json"],
            "does not exist", outputs=["{tmp}/no/a.json"]),
    CliCase("endpoint-both-to-stdout", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                        "lmxray-tiny", "--json", "-", "--html", "-"],
            "only one of --json and --html"),
    CliCase("endpoint-unset-key-env", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                       "lmxray-tiny", "--api-key-env", "LMXRAY_NO_SUCH_VAR"],
            "LMXRAY_NO_SUCH_VAR is not set"),
    CliCase("endpoint-offline-tokenizer", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                           "no-such-org/no-such-tok"], "HF_HUB_OFFLINE is set"),
    CliCase("endpoint-missing-tokenizer-folder", ["explain-endpoint", "hi", "--url", URL,
                                                  "--tokenizer", "./no/such/tok"], "does not exist"),
    CliCase("endpoint-missing-url", ["explain-endpoint", "hi", "--tokenizer", "lmxray-tiny"],
            "Missing option"),
    CliCase("endpoint-zero-samples", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                      "lmxray-tiny", "--n-samples", "0"], "--n-samples"),
    CliCase("endpoint-negative-seed", ["explain-endpoint", "hi", "--url", URL, "--tokenizer",
                                       "lmxray-tiny", "--seed", "-1"], "--seed"),
    # serve-completions
    CliCase("serve-port-out-of-range", ["serve-completions", "--port", "70000"], "--port"),
    CliCase("serve-missing-model-folder", ["serve-completions", "--model", "./no/such/model"],
            "does not exist"),
    # explain --verify
    CliCase("verify-k-zero", ["explain", "hi", "--verify", "--verify-k", "0"], "integer >= 1"),
    CliCase("verify-k-negative", ["explain", "hi", "--verify", "--verify-k", "-5"], "integer >= 1"),
    CliCase("verify-alpha-zero", ["explain", "hi", "--verify", "--alpha", "0"], "alpha must be"),
    CliCase("verify-alpha-one", ["explain", "hi", "--verify", "--alpha", "1"], "alpha must be"),
    CliCase("verify-alpha-above-one", ["explain", "hi", "--verify", "--alpha", "1.5"], "in (0, 1)"),
    CliCase("verify-alpha-negative", ["explain", "hi", "--verify", "--alpha", "-0.1"], "in (0, 1)"),
    CliCase("verify-alpha-nan", ["explain", "hi", "--verify", "--alpha", "nan"], "alpha must be"),
    CliCase("verify-unknown-stability", ["explain", "hi", "--verify", "--stability", "wobble"],
            "unknown stability check"),
    CliCase("verify-empty-stability", ["explain", "hi", "--verify", "--stability", " "],
            "unknown stability check"),
    CliCase("verify-with-foil", ["explain", "The capital of France is", "-t", " Paris", "--foil",
                                 " Rome", "--verify"], "--verify does not support --foil"),
    CliCase("verify-k-without-verify", ["explain", "hi", "--verify-k", "9"], "--verify-k needs --verify"),
    CliCase("alpha-without-verify", ["explain", "hi", "--alpha", "0.1"], "--alpha needs --verify"),
    CliCase("stability-without-verify", ["explain", "hi", "--stability", "swap"],
            "--stability needs --verify"),
    CliCase("model-null-without-verify", ["explain", "hi", "--model-null"],
            "--model-null needs --verify"),
    CliCase("verify-bad-json-folder", ["explain", "hi", "--verify", "--json", "{tmp}/no/a.json"],
            "does not exist", outputs=["{tmp}/no/a.json"]),
    CliCase("serve-remote-without-flag", ["serve-completions", "--host", "0.0.0.0", "--port", "0"],
            "refusing to bind"),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    import lmxray

    return lmxray.load()


def _saved(tmp):
    from lmxray.result import Attribution

    return Attribution.load(Path(__file__).parent / "fixtures" / "attribution_v1_orig.json")


def _load(path):
    from lmxray.result import Attribution

    return Attribution.load(path)


def _file(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return tmp / name


def _attr(*args, **kw):
    return lambda tmp: _tiny().attribute(*args, **kw)


def _verify(**kw):
    def call(tmp):
        a = _tiny().attribute("The capital of France is", target=" Paris", method="random")
        return a.verify(_tiny(), **kw)

    return call


def _verify_other(obj, model=None):
    def call(tmp):
        from lmxray.attribution.verify import verify

        return verify(model if model is not None else _tiny(), obj(tmp) if callable(obj) else obj)

    return call


API_CASES: list[ApiCase] = [
    ApiCase("verify-k-zero-api", _verify(k=0), "integer >= 1", InputError),
    ApiCase("verify-k-float", _verify(k=2.5), "integer >= 1", InputError),
    ApiCase("verify-k-bool", _verify(k=True), "integer >= 1", InputError),
    ApiCase("verify-alpha-zero-api", _verify(alpha=0), "alpha must be", InputError),
    ApiCase("verify-alpha-one-api", _verify(alpha=1.0), "alpha must be", InputError),
    ApiCase("verify-alpha-string", _verify(alpha="0.05"), "alpha must be", InputError),
    ApiCase("verify-unknown-param", _verify(n_null=3), "verify does not take 'n_null'", InputError),
    ApiCase("verify-unknown-stability-api", _verify(stability=["swap", "jiggle"]),
            "unknown stability check 'jiggle'", InputError),
    ApiCase("verify-empty-stability-list", _verify(stability=[]), "unknown stability check",
            InputError),
    ApiCase("verify-negative-seeds", _verify(seeds=-1), "seeds must be", InputError),
    ApiCase("verify-zero-tolerance", _verify(tolerance=0), "tolerance must be a positive", InputError),
    ApiCase("verify-negative-noise", _verify(noise=-0.1), "noise must be a positive", InputError),
    ApiCase("verify-min-spearman-above-one", _verify(min_spearman=1.5), "min_spearman", InputError),
    ApiCase("verify-bad-space", _verify(space="logit"), "space must be", InputError),
    ApiCase("verify-bad-rank-by", _verify(rank_by="loud"), "rank_by must be", InputError),
    ApiCase("verify-not-an-attribution", _verify_other("text"), "expected an lmxray Attribution",
            InputError),
    ApiCase("verify-no-token-ids", _verify_other(
        lambda tmp: __import__("lmxray").Attribution(["a", "b"], ["b"], [[1.0, np.nan]], [0.0], "x")),
        "carries no token ids", InputError),
    ApiCase("verify-not-a-model", _verify_other(_saved, model="gpt2"), "needs the local lmxray Model",
            InputError),
    ApiCase("verify-foil-attribution", lambda tmp: _tiny().attribute(
        "The capital of France is", target=" Paris", foil=" Rome", method="random").verify(_tiny()),
            "foil", InputError),
    ApiCase("attribute-verify-with-foil", _attr("The capital of France is", target=" Paris",
                                                foil=" Rome", verify=True), "foil", InputError),
    ApiCase("attribute-verify-not-bool", _attr("hi", target=" x", verify="yes"),
            "verify must be True, False or a dict", InputError),
    ApiCase("attribute-verify-bad-k", _attr("hi", target=" x", verify={"k": 0}), "integer >= 1",
            InputError),
    ApiCase("attribute-unknown-method", _attr("hi", target=" x", method="nope"), "unknown method"),
    ApiCase("attribute-none-prompt", _attr(None, target=" x"), "prompt must be a string", InputError),
    ApiCase("attribute-int-prompt", _attr(3, target=" x"), "prompt must be a string", InputError),
    ApiCase("attribute-mixed-prompt-list", _attr(["a", 3], target=[" x", " y"]),
            "prompt must be a string", InputError),
    ApiCase("attribute-empty-prompt-list", _attr([], target=[]), "prompt list is empty", InputError),
    ApiCase("attribute-empty-prompt", _attr("", target=" x"), "prompt is empty", InputError),
    ApiCase("attribute-empty-target", _attr("hi", target=""), "target is empty", InputError),
    ApiCase("attribute-int-target", _attr("hi", target=5), "target must be a string", InputError),
    ApiCase("attribute-target-count", _attr(["a", "b"], target=[" x"]), "2 prompts but 1 targets",
            InputError),
    ApiCase("attribute-foil-count", _attr(["a", "b"], target=[" x", " y"], foil=[" z"]),
            "2 prompts but 1 foils", InputError),
    ApiCase("attribute-foil-without-target", _attr("hi", foil=" y"), "foil needs an explicit target",
            InputError),
    ApiCase("attribute-empty-foil", _attr("hi", target=" x", foil=""), "foil is empty", InputError),
    ApiCase("attribute-target-and-new-tokens", _attr("hi", target=" x", max_new_tokens=2),
            "either target= or max_new_tokens=", InputError),
    ApiCase("attribute-zero-new-tokens", _attr("hi", max_new_tokens=0),
            "max_new_tokens must be a positive integer", InputError),
    ApiCase("attribute-float-new-tokens", _attr("hi", max_new_tokens=2.5),
            "max_new_tokens must be a positive integer", InputError),
    ApiCase("attribute-zero-steps", _attr("hi", target=" x", n_steps=0), "n_steps must be at least 1",
            InputError),
    ApiCase("attribute-negative-steps", _attr("hi", target=" x", n_steps=-5),
            "n_steps must be at least 1", InputError),
    ApiCase("attribute-float-steps", _attr("hi", target=" x", n_steps=2.5), "n_steps must be an integer",
            InputError),
    ApiCase("attribute-zero-batch", _attr("hi", target=" x", internal_batch_size=0),
            "internal_batch_size must be a positive", InputError),
    ApiCase("attribute-negative-batch", _attr("hi", target=" x", internal_batch_size=-2),
            "internal_batch_size must be a positive", InputError),
    ApiCase("attribute-zero-budget", _attr("hi", target=" x", memory_budget=0),
            "memory_budget must be a positive", InputError),
    ApiCase("attribute-negative-budget", _attr("hi", target=" x", memory_budget=-1),
            "memory_budget must be a positive", InputError),
    ApiCase("attribute-unknown-baseline", _attr("hi", target=" x", baseline="nope"), "unknown baseline",
            InputError),
    ApiCase("attribute-bool-baseline", _attr("hi", target=" x", baseline=True), "baseline must be",
            InputError),
    ApiCase("attribute-baseline-shape", _attr("hi", target=" x", baseline=np.zeros((2, 3))),
            "baseline array has shape", InputError),
    ApiCase("attribute-unknown-param", _attr("hi", target=" x", n_stepz=4), "does not take n_stepz",
            InputError),
    ApiCase("attribute-unknown-reduce", _attr("hi", target=" x", method="saliency", reduce="max"),
            "unknown reduce", InputError),
    ApiCase("attribute-unknown-integration", _attr("hi", target=" x", integration="simpson"),
            "unknown integration rule", InputError),
    ApiCase("attribute-unknown-target-fn", _attr("hi", target=" x", target_fn="nope"),
            "unknown target function", InputError),
    ApiCase("attribute-layer-out-of-range", _attr("hi", target=" x", method="attention", layer=99),
            "layer must be an integer", InputError),
    ApiCase("attribute-occlusion-bad-replace", _attr("hi", target=" x", method="occlusion",
                                                     replace="blank"), "replace must be", InputError),
    ApiCase("attribute-shapley-zero-samples", _attr("hi", target=" x", method="shapley_sampling",
                                                    n_samples=0), "n_samples", InputError),
    ApiCase("attribute-unknown-features", _attr("hi", target=" x", method="kernel_shap",
                                                features="paragraph"), "features", InputError),
    ApiCase("attribution-save-to-a-folder", lambda tmp: _saved(tmp).save(tmp), "is a folder"),
    ApiCase("attribution-save-no-such-folder", lambda tmp: _saved(tmp).save(tmp / "no" / "a.json"),
            "does not exist", outputs=["{tmp}/no/a.json"]),
    ApiCase("attribution-load-missing", lambda tmp: _load(tmp / "none.json"), "no Attribution result file",
            InputError),
    ApiCase("attribution-load-folder", lambda tmp: _load(tmp), "is a folder", InputError),
    ApiCase("attribution-load-not-utf8", lambda tmp: _load(_file(tmp, "a.json", b'{"x": "\xff"}')),
            "not UTF-8", InputError),
    ApiCase("attribution-load-not-json", lambda tmp: _load(_file(tmp, "a.json", b"{nope")), "JSON",
            FormatError),
    ApiCase("attribution-load-other-format", lambda tmp: _load(_file(
        tmp, "a.json", b'{"format": "lmxray.lens/1"}')), "lmxray.attribution/2", FormatError),
    ApiCase("cache-load-an-attribution", lambda tmp: __import__("lmxray.hooks", fromlist=["x"])
            .ActivationCache.load(_file(tmp, "a.safetensors", b"{}")), "cannot read", FormatError),
    ApiCase("load-offline-hub-id", lambda tmp: __import__("lmxray").load("no-such-org/no-such-model"),
            "HF_HUB_OFFLINE is set", ModelLoadError),
    ApiCase("load-empty-name", lambda tmp: __import__("lmxray").load(""), "model name is empty",
            InputError),
    ApiCase("blackbox-gradient-method",
            lambda tmp: __import__("lmxray.blackbox", fromlist=["x"]).from_callable(
                lambda pairs: [[0.0] * len(c) for _, c in pairs], "lmxray-tiny"
            ).attribute("hi", target=" x", method="saliency"),
            "needs the model's weights", MethodError),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Hub ids must fail at once and in one line when offline (no minutes of retries)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
