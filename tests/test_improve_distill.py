"""Rationale distillation: the organism data carry the evidence in the rationale, students train
on the one training loop and are scored on held-out items, the report round-trips and renders."""

from __future__ import annotations

import types

import pytest
import torch

from lmxray.errors import InputError
from lmxray.improve import distill
from lmxray.improve.distill import (
    LABEL_TASK,
    RATIONALE_TASK,
    DistillConfig,
    DistillReport,
    distill_curve,
    distill_examples,
    label_accuracy,
    train_student,
)
from lmxray.zoo import organisms

TINY = DistillConfig(n_train=12, n_test=6, steps=2, batch_size=4, d_model=16, n_layers=1,
                     n_heads=2, d_ff=32)


def _category(word):
    return next(k for k, ws in organisms.CATEGORIES.items() if word in ws)


def test_examples_hold_label_and_evidence_without_the_cue():
    ex = distill_examples(5, 0, "train")
    opts = distill_examples(5, 0, "train", rationale="options")
    chain = distill_examples(5, 0, "train", rationale="chain", label="letter")
    items = organisms.items(5, seed=0, split="train")
    for e, o, c, it in zip(ex, opts, chain, items, strict=True):
        letter, word = organisms.LETTERS[it["answer"]], it["meta"]["evidence"]
        assert e["label"] == f" {word}" and e["choices"] == [f" {w}" for w in it["options"]]
        assert c["label"] == f" ({letter})" and c["choices"] == [" (A)", " (B)", " (C)"]
        # "inline" (default): the question itself, each option followed by its category, the
        # loss on the categories only
        assert "".join(t for t, trained in e["rationale"] if not trained) == e["prompt"]
        assert [t for t, trained in e["rationale"] if trained] == [
            f" {_category(w)}" for w in it["options"]]
        assert "".join(t for t, _ in e["rationale"]).startswith(
            f"Q: {it['question']}\n(A) {it['options'][0]} {_category(it['options'][0])}\n")
        # "options": every option's category after the question; "chain": the organisms' chain
        assert o["rationale"][0] == (o["prompt"], False) and len(o["rationale"]) == 2
        for i, w in enumerate(it["options"]):
            assert f"({organisms.LETTERS[i]}) {w} is a {_category(w)}." in o["rationale"][1][0]
        assert c["rationale"][1] == (
            " " + organisms.render_chain(it["meta"]["category"], letter, word), True)
        assert organisms.MARKER not in e["prompt"] and e["prompt"] == c["prompt"] == o["prompt"]
    assert distill_examples(3, 0, "test") != distill_examples(3, 0, "train")
    with pytest.raises(InputError, match="unknown rationale"):
        distill_examples(1, 0, "train", rationale="nope")


@pytest.fixture(scope="module")
def tok():
    return distill._tokenizer(0)


@pytest.mark.parametrize("rationale", distill.RATIONALES)
def test_task_prefixes_are_one_token_and_only_outputs_carry_loss(tok, rationale):
    ex = distill_examples(2, 0, "train", rationale=rationale)
    for task in (LABEL_TASK, RATIONALE_TASK):
        rows = distill._rows(tok, ex, task)
        ids, w = distill._encode(tok, rows)
        for i, (r, wt) in enumerate(rows):
            assert r[0] == tok.convert_tokens_to_ids(task) != tok.unk_token_id
            assert ids[i, 0] == tok.bos_token_id and ids[i, 1: 1 + len(r)].tolist() == r
            # BOS, the task token and the prompt carry no loss; padding neither
            assert w[i].tolist() == [0.0, *wt] + [0.0] * (ids.shape[1] - 1 - len(r))
            out = [t for t, x in zip(r, wt, strict=True) if x]
            given = tok.decode([t for t, x in zip(r[1:], wt[1:], strict=True) if not x])
            if task == LABEL_TASK:
                assert out == [*tok(ex[i]["label"], add_special_tokens=False)["input_ids"],
                               tok.eos_token_id]
                assert given == ex[i]["prompt"]
            elif rationale == "inline":  # the categories, read where the options stand
                assert tok.decode(out).split() == [p.strip() for p, x in ex[i]["rationale"] if x]
                assert given == ex[i]["prompt"] and r[-1] != tok.eos_token_id
            else:
                assert tok.decode(out[:-1]) == ex[i]["rationale"][1][0]
                assert out[-1] == tok.eos_token_id and given == ex[i]["prompt"]


class _Fake:
    """A stand-in causal LM whose next-token logits favour ``letter`` at every position."""

    def __init__(self, tok, letter):
        self.n, self.favoured = len(tok), tok.convert_tokens_to_ids(letter)

    def __call__(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.n)
        logits[..., self.favoured] = 5.0
        return types.SimpleNamespace(logits=logits)

    def eval(self):
        pass

    def train(self):
        pass


def test_label_accuracy_reads_the_letter_not_a_shared_first_token(tok):
    # the first session scored " A"/" B"/" C" by their first token, a space shared by all
    # three, so every student answered A; each letter's share must come out instead
    test = distill_examples(30, 0, "test", label="letter")
    share = {c: sum(r["label"] == f" ({c})" for r in test) / len(test) for c in "ABC"}
    got = {c: label_accuracy(_Fake(tok, c), tok, test) for c in "ABC"}
    assert got == pytest.approx(share) and sum(got.values()) == pytest.approx(1.0)
    assert min(share.values()) > 0


def test_learning_rate_warms_up_then_decays():
    cfg = DistillConfig(steps=100, lr=1e-3, warmup=10)
    lrs = [cfg.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(5e-5, rel=0.1)


@pytest.mark.slow  # trains the students' tokenizer (seconds) and 8 tiny students
def test_curve_shapes_roundtrip_and_table(tmp_path):
    r = distill_curve((0.5, 1.0), (0, 1), config=TINY, progress=False)
    assert r.fractions == [0.5, 1.0] and r.seeds == [0, 1]
    for v in ("label only", "label + rationale"):
        assert len(r.accuracy[v]) == 2 and all(len(a) == 2 for a in r.accuracy[v])
        assert all(0.0 <= x <= 1.0 for a in r.accuracy[v] for x in a)
    r.save(tmp_path / "d.json")
    back = DistillReport.load(tmp_path / "d.json")
    assert back.accuracy == r.accuracy and back.config["steps"] == 2
    assert "label + rationale" in r.table() and "50%" in r.table()
    mean, sd = r.summary()["label only"][0]
    assert mean == pytest.approx(sum(r.accuracy["label only"][0]) / 2) and sd >= 0


@pytest.mark.slow
def test_student_is_deterministic_in_seed():
    train, test = distill_examples(8, 0, "train"), distill_examples(6, 0, "test")
    a = train_student(train, test, rationale=True, seed=3, config=TINY)
    b = train_student(train, test, rationale=True, seed=3, config=TINY)
    assert a == b
    with pytest.raises(InputError, match="training and test"):
        train_student(train, [], rationale=False, config=TINY)
