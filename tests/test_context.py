"""Context attribution (lmxray.attribution.context): sources, exact leave-one-out and Shapley,
ContextCite ablations, metrics, the haystack zoo task, views, JSON and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lmxray
from lmxray import cli, zoo
from lmxray.attribution.context import ContextAttribution, attribute_context, split_sources
from lmxray.zoo import tasks

DOC = ("The sky was grey all morning. Anna baked bread for the fair. The bus to town was late. "
       "Her brother fixed the old radio. In the end the bread won the first prize.")
QUERY = " Who baked the bread?"


@pytest.fixture(scope="module")
def tiny():
    return lmxray.load()


@pytest.fixture(scope="module")
def loo(tiny):
    return attribute_context(tiny, DOC, query=QUERY, target=" Anna", method="loo")


def _logprob(model, prompt_ids, target_ids) -> float:
    with torch.no_grad():
        lg = model.logits(prompt_ids + target_ids[:-1])[len(prompt_ids) - 1:]
    return float(torch.log_softmax(lg.float(), -1)[torch.arange(len(target_ids)), target_ids].sum())


@pytest.mark.parametrize("kind, n", [("sentence", 7), ("paragraph", 3), ("document", 3)])
def test_split_sources_partitions_the_text(kind, n):
    text = "A b c. D e f!\n\nG h? I j.\n\n\nK l m.\n---\nN o."
    spans = split_sources(text, kind)
    assert "".join(text[a:b] for a, b in spans) == text
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert len(spans) == n
    if kind == "document":
        assert text[spans[1][0]:spans[1][1]] == "K l m.\n---\n"


def test_leave_one_out_is_exact(tiny, loo):
    assert loo.sources[1] == "Anna baked bread for the fair. "
    ids = loo.info["token_spans"]
    prompt_ids = tiny.encode(DOC + QUERY)
    t_ids = tiny.encode_target(" Anna")
    full = _logprob(tiny, prompt_ids, t_ids)
    assert loo.full_logprob == pytest.approx(full, abs=1e-4)
    for k in (0, 1, 4):
        a, b = ids[k]
        without = _logprob(tiny, prompt_ids[:a] + prompt_ids[b:], t_ids)
        assert loo.scores[k] == pytest.approx(full - without, abs=1e-4)


def test_shapley_is_efficient_and_sums_like_the_game(tiny):
    r = attribute_context(tiny, DOC, query=QUERY, target=" Anna", method="shapley", metrics=False)
    prompt_ids = tiny.encode(DOC + QUERY)
    t_ids = tiny.encode_target(" Anna")
    spans = r.info["token_spans"]
    keep = [i for i in range(len(prompt_ids)) if not any(a <= i < b for a, b in spans)]
    empty = _logprob(tiny, [prompt_ids[i] for i in keep], t_ids)
    assert float(r.scores.sum()) == pytest.approx(r.full_logprob - empty, abs=1e-4)
    assert r.info["n_evaluations"] == 2 ** 5


def test_ablation_matches_contextcite_shape_and_metrics(tiny):
    r = attribute_context(tiny, DOC, query=QUERY, target=" Anna", n_ablations=24, seed=3)
    assert r.method == "ablation" and r.scores.shape == (5,)
    assert set(r.metrics["topk_drop"]) == {1, 3, 5}
    assert r.metrics["lds"] is None or -1 <= r.metrics["lds"] <= 1
    again = attribute_context(tiny, DOC, query=QUERY, target=" Anna", n_ablations=24, seed=3)
    np.testing.assert_array_equal(again.scores, r.scores)
    assert r.info["forward_tokens"]["reused_tokens"] > 0  # sources share stems


def test_user_sources_and_generated_target(tiny):
    parts = ["The sky was grey. ", "Anna baked bread. ", "The bus was late."]
    r = attribute_context(tiny, "".join(parts), sources=parts, method="loo", max_new_tokens=2,
                          metrics=False)
    assert r.sources == parts and r.kind == "custom" and r.target
    spans = attribute_context(tiny, "".join(parts), sources=[(0, 18), (18, 53)], method="loo",
                              target=" Anna", metrics=False)
    assert spans.sources == ["The sky was grey. ", "Anna baked bread. The bus was late."]


@pytest.mark.slow
def test_haystack_evidence_ranked_first(tiny):
    items = tasks.generate("haystack", n=8, seed=1)
    ex = zoo.dataset("haystack", n=8, seed=1)
    verified = [it for it, e in zip(items, ex, strict=True) if e.verified]
    assert len(verified) >= 5
    hits = 0
    for it in verified:
        end = it.meta["context_end"]
        sources = [it.prompt[a:b] for a, b in it.meta["sources"]]
        assert "".join(sources) == it.prompt[:end]
        r = attribute_context(tiny, it.prompt[:end], query=it.prompt[end:], target=it.target,
                              sources=sources, method="loo", metrics=False)
        hits += r.ranking()[0] == it.meta["evidence_source"]
    assert hits >= 0.9 * len(verified)


def test_haystack_items_mark_the_evidence_sentence():
    for it in tasks.generate("haystack", n=5):
        a, b = it.meta["sources"][it.meta["evidence_source"]]
        ev = [(s, e) for s, e, role in it.spans if role == "evidence"]
        assert ev and all(a <= s and e <= b for s, e in ev)
        assert 6 <= it.meta["n_pairs"] <= 10 and it.target == " " + it.label
    assert "haystack" not in tasks.TASKS and "haystack" in tasks.CONTEXT_TASKS


def test_json_round_trip_and_views(loo, tmp_path):
    path = loo.save(tmp_path / "c.json")
    back = ContextAttribution.load(path)
    np.testing.assert_allclose(back.scores, loo.scores)
    assert back.metrics["topk_drop"] == pytest.approx(loo.metrics["topk_drop"])
    assert back.metrics["lds"] == loo.metrics["lds"] and back.target == " Anna"
    assert back.top(2) == loo.top(2)
    html = loo.to_html()
    assert "data-source=\"1\"" in html and "<script" not in html
    tricky = ContextAttribution(text="<b>x</b> y.", target=" <i>", spans=[(0, 11)],
                                scores=np.array([1.0]), method="loo", kind="custom",
                                full_logprob=-1.0)
    assert "<b>x</b>" not in tricky.to_html() and "&lt;b&gt;" in tricky.to_html()
    from rich.console import Console

    con = Console(record=True, width=100)
    loo.show(console=con)
    text = con.export_text()
    assert loo.top(1)[0][2].strip()[:20] in text and "top-k log-prob drop" in text


def test_cli_features_sentence(tmp_path):
    out = tmp_path / "c.json"
    res = CliRunner().invoke(cli.app, ["explain", DOC, "--query", QUERY, "-t", " Anna",
                                       "--features", "sentence", "--context-method", "loo",
                                       "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["format"] == "lmxray.context_attribution/1" and len(data["scores"]) == 5
