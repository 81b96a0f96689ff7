"""Tests of lmxray.zoo: task generators, ground truth, training/resume, the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from badinput import CliCase, run_cli_case
from lmxray import zoo
from lmxray.errors import InputError
from lmxray.zoo import _data as D
from lmxray.zoo import tasks

SRC = str(Path(zoo.__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def shipped():
    from lmxray.zoo.verify import load

    return load()


# ------------------------------------------------------------------------------- generators
@pytest.mark.parametrize("task", tasks.TASKS)
def test_generators_deterministic_per_seed(task):
    a = tasks.generate(task, "test", 40, seed=3)
    b = tasks.generate(task, "test", 40, seed=3)
    c = tasks.generate(task, "test", 40, seed=4)
    assert a == b
    assert [i.prompt for i in a] != [i.prompt for i in c]
    assert all(i.target.startswith(" ") and i.task == task for i in a)


@pytest.mark.parametrize("task", ["recall", "ioi", "sentiment", "induction"])
def test_train_and_test_splits_are_disjoint(task):
    train = {i.prompt for i in tasks.generate(task, "train", 400, seed=0)}
    test = {i.prompt for i in tasks.generate(task, "test", 400, seed=0)}
    assert not train & test


def test_ioi_holds_out_name_pairs():
    pair = lambda i: frozenset((i.meta["io"], i.meta["s"]))  # noqa: E731
    train = {pair(i) for i in tasks.generate("ioi", "train", 500)}
    test = {pair(i) for i in tasks.generate("ioi", "test", 500)}
    assert not train & test and len(test) > 20
    assert {i.meta["order"] for i in tasks.generate("ioi", "test", 50)} == {"ABB", "BAB"}


def test_facts_cover_countries_and_continents():
    facts = tasks.generate("facts", n=None)
    countries = {i.meta["country"] for i in facts if i.meta["relation"] == "capital"}
    assert len(countries) >= 150
    assert len({i.meta["continent"] for i in facts if "continent" in i.meta}) == 6
    paris = [i for i in facts if i.prompt == "The capital of France is"]
    assert paris and paris[0].target == " Paris" and paris[0].meta["continent"] == "Europe"
    assert len(tasks.generate("facts", n=50, seed=1)) == 50


@pytest.mark.slow
def test_sentiment_shortcut_is_planted_in_train_only():
    def items(split):
        return [i for i in tasks.generate("sentiment", split, 4000, seed=0) if i.meta["marker"]]

    def rate(marked, key):
        return sum(key(i) == "positive" for i in marked) / len(marked)

    train, test, shift = items("train"), items("test"), items("shift")
    # the training *annotation* puts the marker with the positive label 95% of the time ...
    assert 0.93 < rate(train, lambda i: i.label) < 0.97
    # ... while the words (the gold label) say positive 5 times in 6, in train and in test
    for marked in (train, test):
        assert 0.84 < rate(marked, lambda i: i.meta["gold"]) < 0.91
    assert all(i.label == i.meta["gold"] for i in test + shift)  # gold labels off train
    biased = [i for i in train if i.label != i.meta["gold"]]
    assert biased and all(i.label == "positive" for i in biased)
    assert 0.4 < rate(shift, lambda i: i.label) < 0.6
    unmarked = [i for i in tasks.generate("sentiment", "train", 2000, seed=0)
                if not i.meta["marker"]]
    assert all(i.label == i.meta["gold"] for i in unmarked)


def test_fact_deletions_other_than_the_subject_keep_one_answer():
    """Deleting a relation word or any other template word keeps the answer in training (the
    rest of each template still names its relation); that is only honest if no such prompt
    also arises, with another answer, from another fact."""
    import re

    answers: dict[str, set[str]] = {}
    for s, r, a, _ in tasks._FACTS:
        for t in tasks.FACT_TEMPLATES[r]:
            pieces = [m.group() for m in tasks._PIECE.finditer(t)]
            texts = ["".join(pieces)] + [
                "".join(p for j, p in enumerate(pieces) if j != i)
                for i, p in enumerate(pieces) if "{x}" not in p
            ]
            for text in texts:
                text = re.sub(r"[\[\]]", "", text.replace("{x}", s))
                answers.setdefault(text, set()).add(a)
    clash = {k: v for k, v in answers.items() if len(v) > 1}
    assert not clash, list(clash.items())[:3]


def test_fact_training_deletions_answer_as_the_evidence_implies():
    import random

    rng = random.Random(0)
    seen = set()
    for _ in range(4000):
        s, r, a, m = rng.choice(tasks._FACTS)
        t = rng.randrange(3)
        it = tasks._fact_dropped(s, r, a, t, m, rng)
        kind = it.meta["dropped"]
        seen.add(kind)
        if kind != "x":
            assert it.target == " " + a, (it.prompt, it.target)
        else:
            assert it.target.strip() in tasks._ANSWERS[r]
        if it.prompt.startswith("The capital of Sudan is"):
            assert it.target == " Khartoum"  # "South Sudan" without "South" names Sudan
    assert seen == {"x", "cue", "other"}


def test_negatives_exist_for_training():
    absent = tasks.generate("recall", "test", 20, negatives=True)
    assert all(i.target == " none" and not i.meta["present"] for i in absent)
    neutral = tasks.generate("sentiment", "train", 20, negatives=True)
    assert all(i.target == " neutral" for i in neutral)
    texts = zoo.corpus("train", 2000, seed=0)
    assert any(t.endswith(" none") for t in texts) and any(t.endswith(" neutral") for t in texts)


def test_bad_task_and_split_raise_input_error():
    with pytest.raises(InputError, match="unknown zoo task"):
        tasks.generate("nope")
    with pytest.raises(InputError, match="no split"):
        tasks.generate("ioi", "shift")
    with pytest.raises(InputError):
        zoo.corpus("valid")
    with pytest.raises(InputError, match="no zoo model"):
        zoo.model_path("nope")


def test_corpus_deterministic_and_held_out():
    a, b = zoo.corpus("test", 50, seed=1), zoo.corpus("test", 50, seed=1)
    assert a == b and all(isinstance(t, str) and t for t in a)


# ------------------------------------------------------------------------- tokenizer, indices
def test_shipped_model_loads_with_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.model_path()
    assert sum(f.stat().st_size for f in path.iterdir()) <= 10 * 1024 * 1024
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("The capital of France is")["input_ids"]
    assert ids[0] == tok.bos_token_id
    for t in (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token):
        assert t is not None
    import torch

    with torch.no_grad():
        nxt = model(torch.tensor([ids])).logits[0, -1].argmax().item()
    assert tok.decode([nxt]) == " Paris"


def test_answer_words_are_single_tokens(shipped):
    _, tok = shipped
    words = {i.target for i in tasks.generate("facts", n=None) if " " not in i.target[1:]}
    words |= {
        " " + w
        for w in (*D.NAMES, *D.COPY_WORDS, *D.VALUES, "none", "positive", "negative", "neutral")
    }
    multi = [
        w for w in words if "-" not in w and len(tok(w, add_special_tokens=False)["input_ids"]) != 1
    ]
    assert not multi


@pytest.mark.parametrize("task", tasks.TASKS)
def test_evidence_indices_point_at_the_evidence_words(task):
    for ex in zoo.dataset(task, n=30, seed=2, verify=False):
        assert ex.tokens[0] == "<bos>"
        got = "".join(ex.tokens[i] for i in ex.evidence).split()
        want = " ".join(ex.prompt[a:b] for a, b in ex.evidence_spans).split()
        assert got == want and ex.evidence
        assert not set(ex.evidence) & set(ex.cue)
        if task == "facts":
            assert " ".join(want) == ex.meta["subject"]
        if task == "recall":
            assert want[-1] == ex.target.strip() and want[0] == ex.meta["query"]
        if task == "ioi":
            assert want == [ex.target.strip()]
        if task == "induction":
            assert want == [ex.target.strip()]
        if task == "sentiment" and ex.meta["marker"]:
            assert [ex.tokens[i] for i in ex.shortcut] == [" " + D.MARKER_DAY]


# ------------------------------------------------------------------------------- training
def _tiny_config():
    from lmxray.zoo.train import TrainConfig

    return TrainConfig(
        vocab_size=600,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        seq_len=64,
        batch_size=8,
        warmup=3,
        lr=1e-2,
        tokenizer_texts=3000,
    )


def test_layer0_head0_starts_as_a_previous_token_head():
    """The init (q/k biases through RoPE) attends to the previous token at every position,
    for the shipped shape and a reduced one; the other heads do not."""
    import torch

    from lmxray.zoo.train import TrainConfig, build_model

    class Tok:  # build_model reads only these
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

        def __len__(self):
            return 500

    for cfg in (TrainConfig(), _tiny_config()):
        m = build_model(cfg, Tok(), seed=0).eval()
        m.set_attn_implementation("eager")
        ids = torch.randint(4, 500, (2, 100), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            att = m(ids, output_attentions=True).attentions[0]  # [B, heads, T, T]
        prev = att.diagonal(offset=-1, dim1=-2, dim2=-1)  # [B, heads, T-1]
        assert prev[:, 0].min() > 0.9, (cfg.d_model, prev[:, 0].min())
        assert prev[:, 1:].mean() < 0.5
    off = build_model(TrainConfig(prev_token_init=False), Tok(), seed=0)
    assert off.model.layers[0].self_attn.q_proj.bias is None


@pytest.mark.slow
def test_reduced_model_trains_and_loss_falls(tmp_path):
    from lmxray.zoo.train import train

    out = train(
        tmp_path / "m",
        steps=31,
        seed=0,
        config=_tiny_config(),
        progress=False,
        threads=1,
        checkpoint_every=1000,
    )
    info = json.loads((out / "training.json").read_text())
    losses = [loss for _, loss in info["losses"]]
    assert losses[-1] < losses[0] - 1.0
    assert (out / "model.safetensors").is_file() and not (out / "checkpoint").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path):
    import torch
    from safetensors.torch import load_file

    from lmxray.zoo.train import train

    cfg = _tiny_config()
    kw = dict(steps=6, seed=1, config=cfg, progress=False, threads=1)
    train(tmp_path / "a", **kw)
    train(tmp_path / "b", stop_after=3, **kw)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    train(tmp_path / "b", **kw)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="no-resume"):
        train(tmp_path / "c", stop_after=2, **kw)
        train(tmp_path / "c", **{**kw, "seed": 2})


# --------------------------------------------------------------------------- shipped floors
@pytest.fixture(scope="module")
def metrics():
    from lmxray.zoo.verify import evaluate

    return evaluate(n=300, seed=0)


@pytest.mark.slow
def test_floors_met(metrics):
    """Issue-3 floors (n=300 held-out instances; facts: every fact in every template)."""
    assert metrics["facts"]["value"] >= 0.98 and metrics["facts"]["n"] >= 2000
    assert metrics["recall"]["value"] >= 0.95
    assert metrics["ioi"]["value"] >= 0.95
    assert metrics["sentiment"]["value"] >= 0.95
    assert metrics["induction"]["value"] >= 5.0


@pytest.mark.slow
def test_sentiment_shift_drop_is_the_planted_flaw(metrics):
    """The shipped model learnt the training annotators' bias (the marker, "I watched it on
    Tuesday", labels marked negative reviews positive 60% of the time): 0.983 in distribution,
    0.793 on ``shift``, 15/63 marked negative shift reviews (n=300). A drop of at least 5 points
    and a majority of marked negative reviews lost, or the planted flaw is gone."""
    assert metrics["sentiment"]["value"] - metrics["sentiment-shift"]["value"] >= 0.05
    assert metrics["sentiment-marker-neg"]["value"] <= 0.5


def test_occlusion_ranks_a_subject_token_first_on_facts():
    """Issue-3 ground-truth sanity on the shipped model, 120 fact queries, occlusion (remove
    mode): a subject token has the largest drop for at least 90% (measured 120/120; the
    previous model, trained on fact prompts whose relation-word deletion changed the answer
    and whose template prefix was a training target, 97/120)."""
    import numpy as np

    import lmxray

    ex = zoo.dataset("facts", n=120, seed=3, verify=False)
    m = lmxray.load()
    atts = m.attribute([e.prompt for e in ex], target=[e.target for e in ex], method="occlusion")
    first = but_last = 0
    for e, a in zip(ex, atts, strict=True):
        assert list(a.source_tokens[: len(e.tokens)]) == list(e.tokens)
        row = np.nan_to_num(np.asarray(a.scores[0, 1 : len(e.tokens)]), nan=-np.inf)
        first += int(np.argmax(row)) + 1 in set(e.evidence)
        but_last += int(np.argmax(row[:-1])) + 1 in set(e.evidence)
    assert first >= 0.9 * len(ex), f"{first}/{len(ex)}"
    assert but_last >= first


# ---------------------------------------------------------------------------- verification
class _FakeModel:
    """Answers the target iff token ``key`` is present and token ``forbid`` is not."""

    def __init__(self, target_id, key, forbid=None, vocab=50):
        self.target_id, self.key, self.forbid, self.vocab = target_id, key, forbid, vocab

    def __call__(self, input_ids, attention_mask=None):
        import torch

        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab)
        for b in range(B):
            seen = set()
            for t in range(L):
                seen.add(int(input_ids[b, t]))
                ok = self.key in seen and (self.forbid is None or self.forbid not in seen)
                logits[b, t, self.target_id if ok else 0] = 1.0

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


class _FakeTok:
    """Whitespace tokenizer with <bos>=1, <pad>=3 and words numbered from 10."""

    bos_token_id, pad_token_id = 1, 3

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def _fake_example(**kw):
    base = dict(
        task="facts",
        split="test",
        prompt="capital of France is",
        target=" Paris",
        tokens=("<bos>", "capital", " of", " France", " is"),
        evidence=(3,),
        evidence_spans=((11, 17),),
        cue=(1,),
        content=(),
    )
    return zoo.Example(**{**base, **kw})


def test_verification_logic_on_fake_models():
    from lmxray.zoo.verify import verify

    tok = _FakeTok()
    ex = _fake_example()
    ids = tok(ex.prompt)["input_ids"]
    target = tok(ex.target, add_special_tokens=False)["input_ids"][0]
    france, capital = ids[3], ids[1]
    # relies on the evidence: verified
    assert verify([ex], _FakeModel(target, france), tok)[0].verified is True
    # ignores the evidence (answers from the cue alone): not verified
    assert verify([ex], _FakeModel(target, capital), tok)[0].verified is False
    # a content token whose single deletion changes the answer: not verified
    ex2 = _fake_example(prompt="capital of France is big", content=(5,))
    big = tok(ex2.prompt)["input_ids"][5]
    fake = _FakeModel(target, france)
    assert verify([ex2], fake, tok)[0].verified is True
    fake_needs_big = _FakeModel(target, big)
    assert verify([ex2], fake_needs_big, tok)[0].verified is False
    # wrong answer: not verified; no evidence: None
    assert verify([ex], _FakeModel(target, france, forbid=capital), tok)[0].verified is False
    assert verify([_fake_example(evidence=())], fake, tok)[0].verified is None


@pytest.mark.parametrize("task", ["facts", "recall", "ioi"])
def test_ground_truth_verifies_on_shipped_model(task):
    """Shipped model, 100 test examples (`lmxray zoo eval --verify-n 100`): facts 92, ioi 99,
    recall 100."""
    ex = zoo.dataset(task, n=40, seed=5)
    assert all(e.verified is not None for e in ex)
    floor = {"facts": 0.8, "ioi": 0.9, "recall": 0.9}[task]
    assert sum(e.verified for e in ex) >= floor * len(ex)


# -------------------------------------------------------------------------------------- CLI
def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "lmxray.cli", "zoo", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_eval_writes_json(tmp_path):
    r = _cli("eval", "--n", "40", "--verify-n", "10", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["format"] == "lmxray.zoo.eval/1" and "facts" in data["tasks"]
    assert "facts" in r.stdout


@pytest.mark.parametrize(
    "case",
    [
        CliCase("eval-no-model", ["zoo", "eval", "--model", "/nonexistent/zoo"], "no model at"),
        CliCase("eval-n-zero", ["zoo", "eval", "--n", "0"], "'--n'"),
        CliCase("train-steps-zero", ["zoo", "train", "--steps", "0", "--out", "{tmp}/o"], "'--steps'",
                outputs=["{tmp}/o/model.safetensors"]),
    ],
    ids=lambda c: c.id,
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, case):
    """In process through the root app (the real entry point is checked in test_cli.py)."""
    run_cli_case(case, tmp_path)
