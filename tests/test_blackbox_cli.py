"""``lmxray explain-endpoint`` / ``serve-completions`` (``lmxray.cli.served``)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import lmxray
import lmxray.blackbox as bb
from lmxray import cli
from lmxray.result import Attribution

runner = CliRunner()
PROMPT, TARGET = "The capital of France is", " Paris. The"


@pytest.fixture(scope="module")
def app():
    return cli.app


@pytest.fixture(scope="module")
def served(tiny_dir):
    m = lmxray.load(str(tiny_dir))
    with bb.serve(m, name="tiny") as srv:
        yield m, srv


def test_explain_endpoint_writes_the_local_numbers(app, served, tiny_dir, tmp_path):
    m, srv = served
    js = tmp_path / "a.json"
    res = runner.invoke(app, ["explain-endpoint", PROMPT, "--url", srv.url, "--tokenizer",
                              str(tiny_dir), "--served-model", "tiny", "--target", TARGET,
                              "--method", "kernel_shap", "--n-samples", "16", "--json", str(js)])
    assert res.exit_code == 0, res.output
    a = Attribution.load(js)
    ref = m.attribute(PROMPT, target=TARGET, method="kernel_shap", n_samples=16)
    np.testing.assert_allclose(a.scores, ref.scores, atol=1e-5, equal_nan=True)
    assert a.model_name == "tiny"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--method", "saliency"], "cannot run on a served model"),
        (["--features", "paragraph"], "unknown features"),
        (["--max-new-tokens", "2"], "either --target or --max-new-tokens"),
    ],
)
def test_explain_endpoint_errors_are_one_line_exit_2(app, served, tiny_dir, tmp_path, extra, match):
    _, srv = served
    js = tmp_path / "a.json"
    res = runner.invoke(app, ["explain-endpoint", PROMPT, "--url", srv.url, "--tokenizer",
                              str(tiny_dir), "--target", TARGET, "--json", str(js), *extra])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and not js.exists()


def test_unreachable_endpoint_is_one_line_exit_2(app, tiny_dir):
    res = runner.invoke(app, ["explain-endpoint", PROMPT, "--url", "http://127.0.0.1:9/v1",
                              "--tokenizer", str(tiny_dir), "--target", TARGET])
    assert res.exit_code == 2 and "cannot reach the scoring server" in res.stderr


def test_serve_completions_refuses_a_remote_bind(app, tiny_dir):
    res = runner.invoke(app, ["serve-completions", "--model", str(tiny_dir), "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "loopback" in res.stderr


def test_explain_endpoint_with_the_embedded_tokenizer_name(app, tmp_path, monkeypatch):
    """``--tokenizer lmxray-tiny`` is the embedded tokenizer (no hub lookup, even offline), and
    the piped output carries the scores."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = lmxray.load()
    js = tmp_path / "a.json"
    with bb.serve(m) as srv:
        res = runner.invoke(app, ["explain-endpoint", PROMPT, "--url", srv.url, "--tokenizer",
                                  "lmxray-tiny", "--target", " Paris", "--method", "occlusion",
                                  "--json", str(js)])
    assert res.exit_code == 0, res.output
    a = Attribution.load(js)
    ref = m.attribute(PROMPT, target=" Paris", method="occlusion")
    assert a.source_tokens == ref.source_tokens
    np.testing.assert_allclose(a.scores, ref.scores, atol=1e-4, equal_nan=True)
    assert "step 1  target ·Paris" in res.stdout and "·France" in res.stdout
