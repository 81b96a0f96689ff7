"""Evaluate and zoo files written by the code before the refactor still load (and resume); the
same annotation marks the same tokens in evaluate, improve and the zoo; the leaderboard reads
in an 80-column terminal; a failed run leaves no header-only rows file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import lmxray
from lmxray.errors import FormatError, InputError
from lmxray.evaluate import evaluate, load_examples
from lmxray.evaluate.data import to_examples
from lmxray.evaluate.report import Evaluation, Leaderboard
from lmxray.evaluate.sanity import SanityResult
from lmxray.zoo import Item, to_example
from lmxray.zoo.verify import ZooEvaluation

FIX = Path(__file__).parent / "fixtures" / "evaluate"
# written by the pre-refactor code (commit 2aebc78's parent tree, /work/wt-orig) with
#   lmxray evaluate --task facts --n 3 --methods saliency,occlusion,random --metrics all,sanity
#       --sanity-examples 1 --out old-rows.jsonl --json old-leaderboard.json --no-progress
#   lmxray zoo eval --n 20 --verify-n 5 --json old-zoo-eval.json
OLD_ROWS, OLD_BOARD, OLD_ZOO = FIX / "old-rows.jsonl", FIX / "old-leaderboard.json", FIX / "old-zoo-eval.json"


@pytest.fixture(scope="module")
def tiny():
    return lmxray.load()


def _text(renderable, width=80) -> str:
    con = Console(record=True, width=width, color_system=None)
    con.print(renderable)
    return con.export_text()


# --------------------------------------------------------------------------- old files
def test_old_rows_file_loads_and_gives_the_old_leaderboard():
    ev = Evaluation.load(OLD_ROWS)
    assert len(ev.rows) == 9 and {s["method"] for s in ev.sanity} == {"saliency", "occlusion", "random"}
    assert ev.config["data"] == "facts" and ev.methods == ["saliency", "occlusion", "random"]
    old = json.loads(OLD_BOARD.read_text())
    new = json.loads(ev.to_json())
    assert new["format"] == old["format"] == "lmxray.leaderboard/1"
    assert new["config"] == old["config"] and set(new["leaderboard"]) == set(old["leaderboard"])
    for m, rec in old["leaderboard"].items():
        assert set(new["leaderboard"][m]) == set(rec), m
        for k, v in rec.items():
            got = new["leaderboard"][m][k]
            assert got == pytest.approx(v, rel=1e-12) if isinstance(v, float) else got == v, (m, k)


def test_old_leaderboard_and_zoo_eval_load_and_show():
    board = Leaderboard.load(OLD_BOARD)
    assert board.to_dict()["leaderboard"] == json.loads(OLD_BOARD.read_text())["leaderboard"]
    assert "random" in _text(board)
    zoo_eval = ZooEvaluation.load(OLD_ZOO)
    assert zoo_eval.tasks["facts"]["n"] == 2490 and zoo_eval.n == 20
    assert json.loads(zoo_eval.to_json()) == json.loads(OLD_ZOO.read_text())
    text = _text(zoo_eval)
    assert "sentiment-shift" in text and "5/5" in text
    with pytest.raises(FormatError, match="not an lmxray"):
        ZooEvaluation.load(OLD_BOARD)
    with pytest.raises(FormatError, match="evaluate results file"):
        Evaluation.load(OLD_BOARD)


def test_an_interrupted_old_rows_file_resumes(tiny, tmp_path):
    lines = OLD_ROWS.read_text().splitlines(keepends=True)
    out = tmp_path / "rows.jsonl"
    # header + 7 of 9 rows, then half a row (a crash mid-write); no sanity records yet
    out.write_text("".join(lines[:8]) + lines[8][:40])
    exs, name = load_examples(tiny, "facts", n=3)
    ev = evaluate(tiny, exs, methods="saliency,occlusion,random", metrics="all,sanity",
                  sanity_examples=1, out=out, progress=False, name=name)
    new_lines = out.read_text().splitlines(keepends=True)
    assert new_lines[:8] == lines[:8]  # kept as written
    assert len(ev.rows) == 9 and len(ev.sanity) == 3
    old = Evaluation.load(OLD_ROWS)
    for a, b in zip(old.rows, ev.rows, strict=True):
        assert (a["example"], a["method"]) == (b["example"], b["method"])
        for k in ("comprehensiveness", "sufficiency", "deletion_auc", "mrr"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    for a, b in zip(old.sanity, ev.sanity, strict=True):
        assert a["method"] == b["method"] and b["final"] == pytest.approx(a["final"], abs=1e-4)


def test_sanity_and_faithfulness_results_round_trip(tiny, tmp_path):
    a = tiny.attribute("The capital of France is", target=" Paris", method="occlusion")
    f = lmxray.evaluate.faithfulness(tiny, a, n_steps=4, bins=(10, 50))
    f2 = type(f).load(f.save(tmp_path / "f.json"))
    assert f2.summary() == pytest.approx(f.summary(), nan_ok=True)
    assert "comprehensiveness" in _text(f2)
    r = SanityResult(method="random", mode="cascading", stages=["lm_head", "layer.0"],
                     spearman=np.array([1.0, np.nan]), spearman_abs=np.array([1.0, 0.9]),
                     per_example=np.array([[1.0], [np.nan]]), threshold=0.5)
    r2 = SanityResult.load(r.save(tmp_path / "s.json"))
    assert r2.stages == r.stages and np.isnan(r2.spearman[1]) and r2.passed is False
    assert "layer.0" in _text(r2) and "failed" in _text(r2)


# --------------------------------------------------------------------------- one span rule
IOI = "When Mary and John went to the store, John gave a drink to"


def test_the_same_spans_mark_the_same_tokens_in_evaluate_improve_and_zoo(tiny):
    johns = [(i, i + 4) for i in (IOI.find("John"), IOI.rfind("John"))]
    ids = tiny.encode(IOI)
    tokens = [tiny.tokenizer.decode([t]) for t in ids]
    expected = [i for i, t in enumerate(tokens) if t.strip() == "John"]
    assert len(expected) == 2
    # evaluate: a word marks every occurrence; character spans mark the tokens they overlap
    ev = to_examples(tiny, [
        {"id": "w", "prompt": IOI, "target": " Mary", "rationale": "John", "evidence": ["John"]},
        {"id": "s", "prompt": IOI, "target": " Mary", "rationale": [list(s) for s in johns],
         "spans": [[a, b, "evidence"] for a, b in johns]},
    ])
    assert ev[0].rationale == ev[0].evidence == ev[1].rationale == ev[1].evidence == expected
    # zoo: an item's evidence spans
    item = Item("ioi", "test", IOI, " Mary", tuple((a, b, "evidence") for a, b in johns))
    assert list(to_example(item, tiny.tokenizer).evidence) == expected
    # improve: the word, and the zoo item (evidence spans are its rationale)
    labelled = lmxray.improve.as_labelled(
        [{"prompt": IOI, "target": " Mary", "rationale": ["John"]}, item], tiny)
    assert [list(x.rationale) for x in labelled] == [expected, expected]
    # a span cutting into a token marks the whole token, in every package
    part = (johns[0][0] + 1, johns[0][0] + 3)
    one = to_examples(tiny, [{"prompt": IOI, "target": " Mary", "rationale": [list(part)]}])
    cut = Item("ioi", "test", IOI, " Mary", ((*part, "evidence"),))
    assert one[0].rationale == list(to_example(cut, tiny.tokenizer).evidence) == expected[:1]
    assert list(lmxray.improve.as_labelled([cut], tiny)[0].rationale) == expected[:1]


def test_zoo_shortcut_spans_are_content_for_verification(tiny):
    item = lmxray.zoo.generate("sentiment", "shift", 40, 0)
    marked = next(i for i in item if any(r == "shortcut" for _, _, r in i.spans))
    ex = to_examples(tiny, [marked])[0]
    zoo_ex = to_example(marked, tiny.tokenizer)
    assert zoo_ex.shortcut and set(zoo_ex.shortcut) <= set(ex.content)
    assert sorted(ex.content) == sorted(set(zoo_ex.content) | set(zoo_ex.shortcut))
    # the zoo's own examples (token indices) resolve to the same evaluate example
    assert to_examples(tiny, [zoo_ex])[0].content == ex.content
    assert to_examples(tiny, [zoo_ex])[0].evidence == ex.evidence == list(zoo_ex.evidence)


# --------------------------------------------------------------------------- views, files
def test_leaderboard_is_readable_at_80_columns():
    ev = Evaluation.load(OLD_ROWS)
    text = _text(ev, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing truncated
    board = ev.leaderboard()
    for m in ev.methods:  # every method and every value is on screen
        assert m in text
        for c in ev.display_columns():
            v = board.loc[m, c]
            if np.isfinite(v):
                assert f"{v:.3g}" in text, (m, c)
    for c in ev.display_columns():
        assert c in text
    wide = _text(ev, 250)  # a wide terminal gets the usual one-row-per-method table
    assert "comprehensiveness ↑" in wide and len([ln for ln in wide.splitlines() if "saliency" in ln]) == 1


def test_many_methods_split_over_tables_at_80_columns():
    ev = Evaluation.load(OLD_ROWS)
    rows = [dict(r, method=f"{r['method']}_{k}") for k in range(4) for r in ev.rows]
    many = Evaluation(rows=rows, config={"data": "facts", "model": "m"})
    text = _text(many, 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert all(f"{m}_{k}" in text for m in ("saliency", "occlusion", "random") for k in range(4))
    assert "(2/" in text


def test_a_run_that_fails_before_its_first_row_writes_nothing(tiny, tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    exs = [{"prompt": "The capital of France is", "target": " Paris"}]
    monkeypatch.setattr("lmxray.evaluate.runner._rows",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, exs, methods="random", metrics="deletion", out=out, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # --no-resume keeps an old file as it was until new rows replace it
    shutil.copy(OLD_ROWS, out)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, exs, methods="random", metrics="deletion", out=out, progress=False,
                 resume=False)
    assert out.read_bytes() == OLD_ROWS.read_bytes()


def test_a_damaged_rows_file_is_refused_not_truncated(tiny, tmp_path):
    out = tmp_path / "rows.jsonl"
    lines = OLD_ROWS.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(InputError, match="line 2 is not UTF-8 JSON"):
        evaluate(tiny, [{"prompt": "a b", "target": " c"}], out=out, progress=False)
    assert out.read_text() == lines[0] + "{not json\n" + "".join(lines[1:])


def test_ctrl_c_says_a_rerun_resumes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lmxray import cli

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "The capital of France is", "target": " Paris"}) + "\n")
    monkeypatch.setattr("lmxray.evaluate.runner._rows",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = ["evaluate", str(data), "--methods", "random", "--metrics", "deletion", "--no-progress",
            "--out", str(tmp_path / "r.jsonl"), "--csv", str(tmp_path / "b.csv")]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 130
    assert res.stderr.strip().splitlines() == [
        f"lmxray: interrupted; rerun the same command to resume (rows so far in {tmp_path / 'r.jsonl'})"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # nothing half-written
    res = CliRunner().invoke(cli.app, [*args, "--no-resume"])
    assert res.exit_code == 130 and "resume" not in res.stderr  # --no-resume: nothing to resume
