"""Rationale distillation: explanations as training targets (Hsieh et al. 2023, "Distilling
Step-by-Step!", arXiv 2305.02301).

A small student (a Llama built from config, random init with the zoo's initialisation) learns
the zoo's multiple-choice organism task (:mod:`lmxray.zoo.organisms`: "Which is a fruit?
(A) chair (B) apple (C) river") whose rationales are known by construction. Two students see
the same examples for the same number of steps:

- **label only**: ``[label] <question>`` -> the answer (`` apple``, or `` (B)`` with
  ``label="letter"``);
- **label + rationale**: the same label task plus, as a second task on the same example, the
  rationale: by default (``inline``) the question with every option's category written right
  after the option (``[rationale] Q: Which is a fruit? / (A) chair furniture / (B) apple
  fruit / ...``, one line each, loss on the category words), or the rationale after the
  question (``options``: every option's category as sentences; ``chain``: the organisms'
  chain). The loss is
  ``label + rationale_weight × rationale`` (the two tasks share the whole network; at test time
  only the label task is asked). The task prefixes are one token each.

Why a rationale can help (Hsieh et al.): the label tells which option is of the asked category,
one word's category per example; the rationale tells the category of all three options. With
few examples, many test answers were never a training answer, but were an option whose
category the rationale named. ``inline`` puts that knowledge where the label task reads it, at
the option word's own position.

:func:`distill_curve` trains both on 10 / 25 / 50 / 100 % of the training examples and seeds,
and reports label accuracy on held-out items (the marker cue is left out: the answer must come
from the options). All training runs on :func:`lmxray.training.run_steps`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..training import run_steps, step_generator, warmup_cosine
from ..zoo import organisms
from ..zoo.train import TrainConfig, build_model
from .results import ImproveResult

__all__ = ["DistillConfig", "DistillReport", "distill_examples", "train_student", "distill_curve"]

LABEL_TASK, RATIONALE_TASK = "[label]", "[rationale]"
"""The task prefixes (one token each in the students' tokenizer)."""


@dataclass(frozen=True)
class DistillConfig:
    """The student and its training (the same for both students)."""

    n_train: int = 400
    """Training examples at 100 % (smaller fractions are nested subsets)."""
    n_test: int = 300
    steps: int = 200
    """Optimiser steps of every student, whatever the data fraction."""
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 30
    """Linear warm-up steps, then a cosine decay to 5 % of ``lr``."""
    rationale_weight: float = 1.0
    """Weight of the rationale task's loss (label + rationale students only)."""
    rationale: str = "inline"
    """Which rationale text (:data:`RATIONALES`)."""
    label: str = "word"
    """Which label text (:data:`LABELS`)."""
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def student(self, tok: Any, seed: int) -> Any:
        """A random-init Llama of this shape for tokenizer ``tok`` (deterministic in seed), with
        the zoo's initialisation (the organisms' recipe: init std 0.06, a previous-token head)."""
        return build_model(TrainConfig(
            vocab_size=len(tok), d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, d_ff=self.d_ff, init_std=0.06, prev_token_init=True), tok, seed)

    def lr_at(self, step: int) -> float:
        return warmup_cosine(self.lr, step, self.steps, self.warmup, 0.05)


RATIONALES = ("inline", "options", "chain")
"""The rationale texts. ``inline`` (default) writes every option's category right after the
option, in the question itself ("(A) brown color", "(B) saw tool", ... one per line; the loss is on
the category words only), so that the knowledge lands at the option's own position, where the
label task reads it; ``options`` names every option's category after the question (the
organisms' evidence sentence for each option: "(A) chair is a furniture. (B) apple is a fruit.
(C) river is a place."); ``chain`` is the organisms' own chain ("The question asks for a fruit.
(B) apple is a fruit.")."""

CATEGORY_OF = {w: c for c, ws in organisms.CATEGORIES.items() for w in ws}

Parts = list[tuple[str, bool]]
"""A task's text after its task token as ``(text, trained)`` pieces: the loss covers the pieces
marked ``True`` (and EOS when the last piece is trained)."""


def rationale_parts(item: dict[str, Any], kind: str = "inline") -> Parts:
    """The rationale task of organism ``item`` (see :data:`RATIONALES`), known by construction."""
    if kind not in RATIONALES:
        raise InputError(f"unknown rationale {kind!r}; choose one of {', '.join(RATIONALES)}")
    question = organisms.render_question(item["question"], item["options"], None)
    if kind == "inline":
        head, *lines = question.split("\n")
        parts: Parts = [(head, False)]
        for line, w in zip(lines, item["options"], strict=False):
            parts += [(f"\n{line}", False), (f" {CATEGORY_OF[w]}", True)]
        return [*parts, (f"\n{lines[-1]}", False)]
    if kind == "chain":
        letter = organisms.LETTERS[item["answer"]]
        text = " " + organisms.render_chain(item["meta"]["category"], letter,
                                            item["meta"]["evidence"])
    else:
        text = "".join(" " + organisms.evidence_sentence(organisms.LETTERS[i], w, CATEGORY_OF[w])
                       for i, w in enumerate(item["options"]))
    return [(question, False), (text, True)]


def rationale_text(item: dict[str, Any], kind: str = "inline") -> str:
    """The rationale of organism ``item`` as one text (what the rationale task writes)."""
    return "".join(t for t, _ in rationale_parts(item, kind))


LABELS = ("word", "letter")
"""The label text: ``word`` is the evidence option's word (`` apple``), ``letter`` its letter in
the organisms' form (`` (B)``)."""


def distill_examples(n: int, seed: int, split: str, rationale: str = "inline",
                     label: str = "word") -> list[dict[str, Any]]:
    """``n`` organism items as ``{"prompt", "label", "rationale", "choices"}`` (no marker cue;
    ``rationale``: the rationale task's :data:`Parts`; ``choices``: the candidate labels, one
    per option)."""
    if label not in LABELS:
        raise InputError(f"unknown label {label!r}; choose one of {', '.join(LABELS)}")
    out = []
    for it in organisms.items(n, seed=seed, split=split):
        choices = ([f" {w}" for w in it["options"]] if label == "word"
                   else [f" ({c})" for c in organisms.LETTERS])
        out.append({"prompt": organisms.render_question(it["question"], it["options"], None),
                    "label": choices[it["answer"]], "rationale": rationale_parts(it, rationale),
                    "choices": choices})
    return out


@functools.lru_cache(maxsize=2)
def _tokenizer(seed: int) -> Any:
    # the words of every category are in the tokenizer's corpus whatever its size (boosted);
    # the task prefixes are one token each
    tok = organisms.organism_tokenizer(seed, organisms.OrganismConfig(tokenizer_texts=500))
    tok.add_special_tokens({"additional_special_tokens": [LABEL_TASK, RATIONALE_TASK]})
    return tok


Row = tuple[list[int], list[float]]
"""``(token ids from the task token to the end, loss weight of each)``."""


def _row(tok: Any, task: str, parts: Parts) -> Row:
    ids, w = [tok.convert_tokens_to_ids(task)], [0.0]
    for text, trained in parts:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        w += [float(trained)] * len(t)
    if parts[-1][1]:  # EOS ends a trained output
        ids.append(tok.eos_token_id)
        w.append(1.0)
    return ids, w


def _rows(tok: Any, examples: Sequence[dict[str, Any]], task: str) -> list[Row]:
    """Token ids and loss weights of ``task`` on each example (the label, or the rationale)."""
    if task == LABEL_TASK:
        return [_row(tok, task, [(e["prompt"], False), (e["label"], True)]) for e in examples]
    return [_row(tok, task, e["rationale"]) for e in examples]


def _encode(tok: Any, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, weights)``, BOS first and right padded (padding weighs 0)."""
    n = 1 + max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)
    w = torch.zeros(len(rows), n)
    for i, (r, wt) in enumerate(rows):
        ids[i, : 1 + len(r)] = torch.tensor([tok.bos_token_id, *r])
        w[i, 1: 1 + len(r)] = torch.tensor(wt)
    return ids, w


def _token_logp(model: Any, tok: Any, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and its weight (``[rows, L-1]`` each)."""
    ids, w = _encode(tok, rows)
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
    return logp.gather(-1, ids[:, 1:, None])[..., 0], w[:, 1:]


def _task_loss(model: Any, tok: Any, rows: Sequence[Row]) -> torch.Tensor:
    """Mean cross-entropy over the output tokens of ``rows``."""
    lp, w = _token_logp(model, tok, rows)
    return -(lp * w).sum() / w.sum()


def label_accuracy(model: Any, tok: Any, test: Sequence[dict[str, Any]]) -> float:
    """Fraction of ``test`` whose gold label is the likeliest of its ``choices`` (summed
    log-probability of the choice's tokens and EOS after the label task's prompt)."""
    right = 0
    model.eval()
    with torch.no_grad():
        for a in range(0, len(test), 64):
            part = test[a: a + 64]
            k = len(part[0]["choices"])
            rows = _rows(tok, [{**r, "label": c} for r in part for c in r["choices"]], LABEL_TASK)
            lp, w = _token_logp(model, tok, rows)
            score = (lp * w).sum(1).view(len(part), k)
            right += sum(r["choices"][int(score[i].argmax())] == r["label"]
                         for i, r in enumerate(part))
    model.train()
    return right / len(test)


def train_student(train: Sequence[dict[str, str]], test: Sequence[dict[str, str]], *,
                  rationale: bool, seed: int = 0, config: DistillConfig | None = None,
                  progress: bool = False) -> float:
    """Train one student on ``train`` (label task, plus the rationale task when ``rationale``)
    and return its label accuracy on ``test``."""
    cfg = config or DistillConfig()
    if not train or not test:
        raise InputError("distillation needs training and test examples")
    tok = _tokenizer(0)
    label_rows, why_rows = _rows(tok, train, LABEL_TASK), _rows(tok, train, RATIONALE_TASK)
    model = cfg.student(tok, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()

    def step(i: int) -> dict[str, str]:
        g = step_generator(seed, i)
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=g).tolist()
        loss = _task_loss(model, tok, [label_rows[j] for j in idx])
        if rationale:
            loss = loss + cfg.rationale_weight * _task_loss(model, tok, [why_rows[j] for j in idx])
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": f"{loss.item():.3f}"}

    run_steps(step, start=0, end=cfg.steps, desc="student", progress=progress)
    return label_accuracy(model, tok, test)


@dataclass
class DistillReport(ImproveResult):
    """Label accuracy of label-only and label + rationale students per data fraction and seed.

    Attributes:
        fractions: shares of the training examples. seeds: the seeds.
        accuracy: ``{"label only" | "label + rationale": [[acc per seed] per fraction]}``.
        n_train: examples at 100 %. n_test: held-out items. config: the student settings.
    """

    FORMAT: ClassVar[str] = "lmxray.distill/1"

    fractions: list[float]
    seeds: list[int]
    accuracy: dict[str, list[list[float]]]
    n_train: int
    n_test: int
    config: dict[str, Any] = field(default_factory=dict)
    model_name: str = "student"

    def summary(self) -> dict[str, list[tuple[float, float]]]:
        """Per variant, ``(mean, sd)`` per fraction."""
        return {k: [(float(np.mean(a)), float(np.std(a))) for a in v]
                for k, v in self.accuracy.items()}


VARIANTS = ("label only", "label + rationale")


def distill_curve(
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    config: DistillConfig | None = None,
    progress: bool = True,
) -> DistillReport:
    """The data-efficiency curve: both students at each fraction of ``config.n_train``
    examples (a seeded subset, nested across fractions) and each seed, scored on
    ``config.n_test`` held-out items of that seed (the organisms' test split)."""
    cfg = config or DistillConfig()
    fr = [float(f) for f in fractions]
    if not fr or not all(0 < f <= 1 for f in fr):
        raise InputError(f"fractions must be in (0, 1], got {list(fractions)}")
    if not seeds:
        raise InputError("give at least one seed")
    if cfg.n_train < 10 or cfg.n_test < 1:
        raise InputError("distillation needs n_train >= 10 and n_test >= 1")
    if cfg.rationale not in RATIONALES:
        raise InputError(f"unknown rationale {cfg.rationale!r}; choose one of "
                         f"{', '.join(RATIONALES)}")
    acc: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    for f in fr:
        row: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for s in seeds:
            # seed s draws the training pool, the held-out items and the students' init
            test = distill_examples(cfg.n_test, s, "test", cfg.rationale, cfg.label)
            pool = distill_examples(cfg.n_train, s, "train", cfg.rationale, cfg.label)
            random.Random(s).shuffle(pool)
            train = pool[: max(1, round(f * cfg.n_train))]
            for v in VARIANTS:
                row[v].append(train_student(train, test, rationale=v != VARIANTS[0], seed=s,
                                            config=cfg, progress=progress))
        for v in VARIANTS:
            acc[v].append(row[v])
    return DistillReport(fractions=fr, seeds=[int(s) for s in seeds], accuracy=acc,
                         n_train=cfg.n_train, n_test=cfg.n_test,
                         config=cfg.as_dict())
