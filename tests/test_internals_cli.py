"""The internals CLI commands (lens, lens-train, trace, heads, probe) on the tiny GPT-2 fixture:
outputs written after success, JSON formats, and the one-line exit-2 error contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from lmxray import cli
from lmxray.cli import internals as cli_internals
from lmxray.cli.internals import register

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _app() -> typer.Typer:
    app = typer.Typer(cls=cli.LmxrayGroup, pretty_exceptions_enable=False, add_completion=False)

    @app.command()
    def version() -> None:  # a second command keeps typer in multi-command mode
        pass

    register(app)
    return app


APP = _app()


def invoke(*args: object):
    return runner.invoke(APP, [str(a) for a in args])


def ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)


def assert_clean_error(result, outputs=()):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmxray: error: "), result.stderr
    assert "Traceback" not in result.output
    for p in outputs:
        assert not Path(p).exists()


def test_lens_writes_json_html_png(tiny_dir, tmp_path):
    j, h, p = tmp_path / "l.json", tmp_path / "l.html", tmp_path / "l.png"
    r = invoke("lens", "The capital of France is", "--target", " Rome", "--model", tiny_dir,
               "--json", j, "--html", h, "--png", p)
    ok(r)
    d = json.loads(j.read_text())
    assert d["format"] == "lmxray.lens/1" and d["layers"] == ["embed", "0", "1"]
    assert h.read_text().startswith("<!doctype html>") and p.read_bytes()[:4] == b"\x89PNG"
    assert "logit_lens" in r.stdout
    bad = invoke("lens", "The capital", "--position", "40", "--model", tiny_dir, "--json", tmp_path / "x.json")
    assert_clean_error(bad, [tmp_path / "x.json"])
    missing = invoke("lens", "x", "--model", tiny_dir, "--json", tmp_path / "no" / "x.json")
    assert_clean_error(missing)


def test_lens_train_then_tuned_lens(tiny_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    from conftest import CORPUS

    corpus.write_text("\n".join(sorted(set(CORPUS)) * 4))
    out = tmp_path / "lens.safetensors"
    r = invoke("lens-train", out, "--corpus", corpus, "--steps", "5", "--batch-size", "4", "--model", tiny_dir,
               "--json", tmp_path / "t.json")
    ok(r)
    assert out.exists() and "tuned lens" in r.stdout
    d = json.loads((tmp_path / "t.json").read_text())
    assert len(d["kl_logit"]) == 3 and len(d["kl_tuned"]) == 3
    r = invoke("lens", "The dog", "--tuned", out, "--model", tiny_dir, "--json", "-")
    ok(r)
    assert json.loads(r.stdout)["method"] == "tuned_lens"
    assert_clean_error(invoke("lens", "The dog", "--tuned", tmp_path / "none.safetensors", "--model", tiny_dir))
    assert_clean_error(invoke("lens-train", tmp_path / "l2.safetensors", "--corpus", tmp_path / "nope.txt",
                              "--model", tiny_dir))


CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.mark.slow
def test_trace_patching_and_causal_tracing(tiny_dir, tmp_path):
    j = tmp_path / "p.json"
    r = invoke("trace", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John", "--sites",
               "resid_pre,attn.head_out", "--attribution", "--model", tiny_dir, "--json", j,
               "--png", tmp_path / "p.png", "--html", tmp_path / "p.html")
    ok(r)
    d = json.loads(j.read_text())
    assert d["format"] == "lmxray.patching/1" and set(d["effects"]) == {"resid_pre", "attn.head_out"}
    assert "attribution_pearson_r" in d["info"] and "Pearson r" in r.stdout
    r = invoke("trace", "Berlin is in Germany, Madrid is in", "--subject", "Madrid", "--samples", "2",
               "--model", tiny_dir, "--json", tmp_path / "t.json", "--png", tmp_path / "t.png")
    ok(r)
    assert json.loads((tmp_path / "t.json").read_text())["format"] == "lmxray.trace/1"
    assert (tmp_path / "t.png").exists()
    assert_clean_error(invoke("trace", CLEAN, "--model", tiny_dir))
    assert_clean_error(invoke("trace", CLEAN, "--corrupt", "Mary went", "--model", tiny_dir, "--json", j.with_suffix(".x")),
                       [j.with_suffix(".x")])
    assert_clean_error(invoke("trace", CLEAN, "--corrupt", CORRUPT, "--sites", "bogus", "--model", tiny_dir))


def test_trace_zoo_facts(tiny_dir, tmp_path, monkeypatch):
    items = [{"prompt": "The capital of France is", "target": " Paris", "meta": {"subject": "France"}},
             {"prompt": "Berlin is in Germany, Madrid is in", "target": " Spain", "meta": {"subject": "Madrid"}}]
    monkeypatch.setattr(cli_internals, "zoo_examples", lambda *a, **k: items)
    ck = tmp_path / "ck.jsonl"
    r = invoke("trace", "--zoo-facts", "2", "--samples", "2", "--model", tiny_dir, "--checkpoint", ck,
               "--json", tmp_path / "s.json")
    # the tiny random model knows none of these facts: a clean one-line error
    assert_clean_error(r, [tmp_path / "s.json"])
    head, *rows = [json.loads(x) for x in ck.read_text().splitlines()]
    assert head["format"] == "lmxray.trace-checkpoint/1" and head["options"]["n_samples"] == 2
    assert [r["index"] for r in rows] == [0, 1]
    before = ck.read_bytes()
    # the checkpoint of another run (other options) is refused and left as it was
    r = invoke("trace", "--zoo-facts", "2", "--samples", "3", "--model", tiny_dir, "--checkpoint", ck)
    assert_clean_error(r)
    assert "another run" in r.stderr and "n_samples" in r.stderr and ck.read_bytes() == before
    # an unrelated file is never appended to
    other = tmp_path / "notes.jsonl"
    other.write_text('{"my": "data"}\n')
    r = invoke("trace", "--zoo-facts", "2", "--samples", "2", "--model", tiny_dir, "--checkpoint", other)
    assert_clean_error(r)
    assert "not a trace checkpoint" in r.stderr and other.read_text() == '{"my": "data"}\n'


def test_heads(tiny_dir, tmp_path):
    r = invoke("heads", "--n-seqs", "2", "--seq-len", "6", "--model", tiny_dir, "--json", tmp_path / "h.json",
               "--png", tmp_path / "h.png", "--html", tmp_path / "h.html")
    ok(r)
    assert "induction:" in r.stdout and (tmp_path / "h.png").exists()
    assert json.loads((tmp_path / "h.json").read_text())["format"] == "lmxray.heads/1"
    assert_clean_error(invoke("heads", "--kind", "nope", "--model", tiny_dir))


def test_heads_ablation_and_probe_on_zoo_items(tiny_dir, tmp_path, monkeypatch):
    words = ["dog", "fox", "Paris", "Rome", "red", "blue"]
    seqs = [" ".join(words[i:] + words[:i]) for i in range(6)]
    induction = [{"prompt": s + " " + s.rsplit(" ", 1)[0], "target": " " + s.rsplit(" ", 1)[1]} for s in seqs]
    countries = ["France", "Italy", "Germany", "Spain", "Portugal", "Mary", "John", "Berlin", "Madrid", "Lisbon"]
    facts = [{"prompt": t.format(c), "target": " x", "meta": {"subject": c, "relation": "capital",
                                                            "continent": "Europe" if i % 2 else "Asia"}}
             for i, c in enumerate(countries) for t in ("The capital of {} is", "{} has a capital called")]
    monkeypatch.setattr(cli_internals, "zoo_examples", lambda task, *a, **k: induction if task == "induction" else facts)
    r = invoke("heads", "--n-seqs", "2", "--seq-len", "5", "--ablate-zoo", "induction", "--top", "2",
               "--model", tiny_dir, "--json", tmp_path / "h.json")
    ok(r)
    abl = json.loads((tmp_path / "h.json").read_text())["info"]["ablation"]
    assert len(abl["heads"]) == 2 and len(abl["random"]) == 10 and "random sets" in r.stdout
    r = invoke("probe", "capital", "--cv", "2", "--n", "20", "--model", tiny_dir, "--json", tmp_path / "p.json")
    ok(r)
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["format"] == "lmxray.probe/1" and d["n_types"] == 10 and "selectivity" in r.stdout


def test_ctrl_c_in_a_checkpointed_trace_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C during ``trace --zoo-facts --checkpoint`` is re-raised as an interruption whose
    one line says to rerun the same command (without a checkpoint: a plain interruption)."""
    from lmxray.cli import _common
    from lmxray.internals import tracing

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_internals, "zoo_facts", lambda n: [{"prompt": "a b", "subject": "a", "answer": " b"}])
    monkeypatch.setattr(tracing, "trace_facts", interrupted)
    line = getattr(_common, "interrupted_message", str)
    with pytest.raises(KeyboardInterrupt) as info:
        cli_internals._trace_zoo_facts(None, 1, 10, 2, 3.0, tmp_path / "ck.jsonl")
    assert "rerun the same command to resume" in line(info.value)
    with pytest.raises(KeyboardInterrupt) as info:
        cli_internals._trace_zoo_facts(None, 1, 10, 2, 3.0, None)
    assert "rerun" not in line(info.value)
