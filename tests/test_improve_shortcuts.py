"""Shortcut detection: the aggregation against hand-computed values, a planted label-correlated
token ranked first, rationale tokens excluded, batching invariance, JSON round trip, errors, and
the labelled-example adapters (zoo spans mapped with any tokenizer, JSONL rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.examples import spans_to_tokens
from lmxray.improve._common import Labelled, as_labelled, zoo_labelled
from lmxray.improve.shortcuts import ShortcutReport, detect_shortcuts, token_table
from lmxray.io import read_jsonl


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def m() -> lmxray.Model:
    hf, tok = build_tiny("llama")
    return lmxray.load(model=hf, tokenizer=tok)


def test_token_table_by_hand():
    # ids: 0 = special (skipped); 5 occurs in ex 0 and 1 (labels a, a); 6 in ex 1 and 2 (a, b)
    tokens = [[0, 5, 7], [0, 5, 6], [0, 6, 7]]
    shares = [np.array([0.0, 0.75, 0.25]), np.array([0.0, 0.5, 0.5]), np.array([0.0, 0.2, 0.8])]
    signed = [np.array([0.0, 0.75, -0.25]), np.array([0.0, -0.5, 0.5]), np.array([0.0, 0.2, 0.8])]
    rat = [{2}, set(), {1}]
    labels = ["a", "a", "b"]
    t = token_table(tokens, shares, signed, rat, labels, skip={0}, prior_count=0.0)
    # token 5: two counted tokens per example -> attr = share * 2
    assert t[5]["count"] == 2 and t[5]["attr"] == pytest.approx((0.75 * 2 + 0.5 * 2) / 2)
    assert t[5]["signed"] == pytest.approx((0.75 - 0.5) / 2)
    assert t[5]["rationale"] == 0.0
    # P(a) = 2/3; P(a | 5) = 1 -> assoc (1 - 2/3) / (1/3) = 1
    assert t[5]["label"] == "a" and t[5]["assoc"] == pytest.approx(1.0) and t[5]["p_label"] == 1.0
    # token 6: labels a, b -> P(b | 6) = 1/2 vs P(b) = 1/3 -> (1/2 - 1/3) / (2/3) = 1/4
    assert t[6]["label"] == "b" and t[6]["assoc"] == pytest.approx(0.25)
    assert t[6]["rationale"] == pytest.approx(0.5)
    assert t[7]["rationale"] == pytest.approx(0.5)
    assert 0 not in t
    # shrinkage: 10 pseudo-examples at the prior pull P(a | 5) to (2 + 10 * 2/3) / 12
    s = token_table(tokens, shares, signed, rat, labels, skip={0}, prior_count=10.0)
    p = (2 + 10 * 2 / 3) / 12
    assert s[5]["p_label"] == pytest.approx(p) and s[5]["assoc"] == pytest.approx(
        (p - 2 / 3) / (1 / 3)
    )


WORDS = ["fox", "dog", "store", "drink", "plot", "film"]


def _planted(n: int = 40, seed: int = 0) -> list[dict]:
    """Label = the word after 'The'; the rationale is that word. ' Berlin' is planted in 90% of
    the 'a' examples and 10% of the 'b' ones; other words are random."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = "Paris" if i % 2 == 0 else "Rome"
        cue = "fox" if lab == "Paris" else "dog"
        extra = " ".join(rng.choice(WORDS[2:], size=2))
        marker = rng.random() < (0.9 if lab == "Paris" else 0.1)
        prompt = f"The {cue} {extra}" + (" Berlin" if marker else " Madrid") + " is"
        rows.append({"prompt": prompt, "target": " " + lab, "rationale": [cue]})
    return rows


def test_planted_token_ranks_first_and_rationales_are_excluded(m):
    rows = _planted()
    rep = detect_shortcuts(m, rows, method="input_x_gradient", min_count=3, progress=False)
    assert rep.top(1) == ["Berlin"]
    assert rep.rows[0]["label"] == "Paris" and rep.rows[0]["assoc"] > 0.3
    excluded = {r["token"].strip() for r in rep.excluded}
    assert {"fox", "dog"} <= excluded
    assert not {"fox", "dog"} & {r["token"].strip() for r in rep.rows}
    assert rep.has_rationales and rep.n_examples == len(rows)
    # scores are attr * assoc * (1 - rationale), sorted
    for r in rep.rows:
        assert r["score"] == pytest.approx(r["attr"] * r["assoc"] * (1 - r["rationale"]), abs=1e-5)
    assert [r["score"] for r in rep.rows] == sorted((r["score"] for r in rep.rows), reverse=True)
    assert "Berlin" in rep.table(3)


def test_batching_does_not_change_the_report(m):
    rows = _planted(16)
    a = detect_shortcuts(
        m, rows, method="input_x_gradient", min_count=2, batch_size=16, progress=False
    )
    b = detect_shortcuts(
        m, rows, method="input_x_gradient", min_count=2, batch_size=3, progress=False
    )
    assert [r["token"] for r in a.rows] == [r["token"] for r in b.rows]
    for x, y in zip(a.rows, b.rows, strict=True):
        assert x["attr"] == pytest.approx(y["attr"], rel=1e-4, abs=1e-6)


def test_without_rationales_the_report_says_so(m):
    rows = [{k: v for k, v in r.items() if k != "rationale"} for r in _planted(20)]
    rep = detect_shortcuts(m, rows, method="occlusion", min_count=3, progress=False)
    assert not rep.has_rationales and "no rationales" in rep.table()


def test_round_trip_and_png(m, tmp_path):
    rep = detect_shortcuts(m, _planted(12), method="input_x_gradient", min_count=2, progress=False)
    path = tmp_path / "s.json"
    rep.save(path)
    back = ShortcutReport.load(path)
    assert back.rows == json.loads(rep.to_json())["rows"] and back.method == rep.method
    rep.to_png(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_errors(m, tmp_path):
    with pytest.raises(InputError, match="at least 2"):
        detect_shortcuts(m, _planted(1), progress=False)
    with pytest.raises(InputError, match="min_count"):
        detect_shortcuts(m, _planted(4), min_count=0, progress=False)
    with pytest.raises(InputError, match="needs a 'prompt'"):
        detect_shortcuts(m, [{"text": "x"}, {"text": "y"}], progress=False)
    with pytest.raises(InputError, match="does not occur"):
        as_labelled([{"prompt": "The fox", "target": " x", "rationale": ["cat"]}], m)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "target": " b"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        read_jsonl(bad)
    with pytest.raises(InputError, match="no JSONL file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_zoo_spans_map_to_any_tokenizer(m):
    """Zoo character spans land on the tiny tokenizer's tokens that spell the marked words."""
    data = zoo_labelled("sentiment", "train", 40, 0, m)
    marked = [e for e in data if e.irrelevant]
    assert marked
    for e in marked:
        ids = m.encode(e.prompt)
        text = "".join(m.token_strings([ids[i]])[0] for i in e.irrelevant)
        # the marked tokens spell the whole marker word (an empty or partial mark fails)
        assert "Tuesday" in text.replace(" ", ""), text
    assert all(e.rationale for e in data)
    assert spans_to_tokens(m, "The fox", [(4, 7)]) == [
        i
        for i, t in enumerate(m.encode("The fox"))
        if "fox" in m.token_strings([t])[0]
        or m.token_strings([t])[0].strip() in ("f", "o", "x", "fo", "ox")
    ]
    lab = as_labelled([("The fox", " jumps"), Labelled("a", " b")], m)
    assert lab[0].cls == "jumps" and lab[1].prompt == "a"


def test_explain_away_by_hand():
    """Token 8 always comes with the marker 5 (like " on" in "on Tuesday") and inherits its label
    correlation; once the marker's examples are set aside it predicts nothing."""
    from collections import Counter

    from lmxray.improve.shortcuts import association, explain_away

    labels = ["a"] * 8 + ["b"] * 8
    # marker 5 in 7 'a' examples and 1 'b'; 8 in the same examples plus 2 'a' and 2 'b' others
    ex5 = [0, 1, 2, 3, 4, 5, 6, 8]
    ex8 = ex5 + [7, 9, 10, 11]
    stats = {}
    for t, ex in ((5, ex5), (8, ex8)):
        lab, v, p = association([labels[e] for e in ex], Counter(labels), len(labels), 0.0)
        stats[t] = {"assoc": v, "examples": ex}
    assert stats[5]["assoc"] > stats[8]["assoc"] > 0
    res = explain_away(stats, [5, 8], labels, prior_count=0.0)
    assert res[5] == (stats[5]["assoc"], None)
    # without examples 0-6 and 8: labels of the rest are a: 1 (ex 7), b: 7; token 8 there: a 1, b 3
    # P(b | 8) = 3/4 vs P(b) = 7/8 -> below prior; P(a | 8) = 1/4 vs 1/8 -> (1/4 - 1/8) / (7/8) = 1/7
    assert res[8][1] == 5 and res[8][0] == pytest.approx(1 / 7)
