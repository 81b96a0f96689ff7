"""Rationale distillation: explanations as training targets (Hsieh et al. 2023, "Distilling
Step-by-Step!", arXiv 2305.02301).

A small student (a Llama built from config, random init) learns the zoo's multiple-choice
organism task (:mod:`lmxray.zoo.organisms`: "Which is a fruit? (A) chair (B) apple (C) river")
whose rationales are known: the chain "The question asks for a fruit. (B) apple is a fruit."
names the evidence. Two students see the same examples for the same number of steps:

- **label only**: ``[label] <question> ->`` the letter (``B)``);
- **label + rationale**: the same label task plus, as a second task on the same example,
  ``[rationale] <question> ->`` the chain; the loss is ``label + rationale_weight × rationale``
  (the two tasks share the whole network; at test time only the label task is asked).

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
import torch.nn.functional as F

from ..errors import InputError
from ..training import run_steps, step_generator
from ..zoo import organisms
from .results import ImproveResult

__all__ = ["DistillConfig", "DistillReport", "distill_examples", "train_student", "distill_curve"]

LABEL_TASK, RATIONALE_TASK = "[label] ", "[rationale] "


@dataclass(frozen=True)
class DistillConfig:
    """The student and its training (the same for both students)."""

    n_train: int = 400
    """Training examples at 100 % (smaller fractions are nested subsets)."""
    n_test: int = 300
    steps: int = 300
    """Optimiser steps of every student, whatever the data fraction."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    batch_size: int = 32
    lr: float = 3e-3
    rationale_weight: float = 1.0
    """Weight of the rationale task's loss (label + rationale students only)."""

    def student(self, tok: Any, seed: int) -> Any:
        """A random-init Llama of this shape for tokenizer ``tok`` (deterministic in seed)."""
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=self.d_model, intermediate_size=self.d_ff,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128


def distill_examples(n: int, seed: int, split: str) -> list[dict[str, str]]:
    """``n`` organism items as ``{"prompt", "label", "rationale"}`` (no marker cue)."""
    out = []
    for it in organisms.items(n, seed=seed, split=split):
        letter = organisms.LETTERS[it["answer"]]
        out.append({
            "prompt": organisms.render_question(it["question"], it["options"], None) + " ->",
            "label": f" {letter})",
            "rationale": " " + organisms.render_chain(it["meta"]["category"], letter,
                                                      it["meta"]["evidence"]),
        })
    return out


@functools.lru_cache(maxsize=2)
def _tokenizer(seed: int) -> Any:
    # the words of every category are in the tokenizer's corpus whatever its size (boosted)
    return organisms.organism_tokenizer(seed, organisms.OrganismConfig(tokenizer_texts=500))


def _encode(tok: Any, rows: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, weights)`` right padded; weight 1 on the output tokens and EOS."""
    seqs, wts = [], []
    for prompt, target in rows:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"]
        seqs.append([tok.bos_token_id, *p, *t, tok.eos_token_id])
        wts.append([0.0] * (1 + len(p)) + [1.0] * (len(t) + 1))
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
    w = torch.zeros(len(seqs), n)
    for i, (s, wt) in enumerate(zip(seqs, wts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        w[i, : len(s)] = torch.tensor(wt)
    return ids, w


def _task_loss(model: Any, tok: Any, rows: Sequence[tuple[str, str]]) -> torch.Tensor:
    ids, w = _encode(tok, rows)
    logits = model(input_ids=ids).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none")
    wt = w[:, 1:].reshape(-1)
    return (ce * wt).sum() / wt.sum()


def label_accuracy(model: Any, tok: Any, test: Sequence[dict[str, str]]) -> float:
    """Fraction of ``test`` whose letter has the highest next-token logit among A/B/C after
    the label task's prompt."""
    letters = [tok(f" {c}", add_special_tokens=False)["input_ids"][0]
               for c in organisms.LETTERS]
    gold = [organisms.LETTERS.index(r["label"].strip()[0]) for r in test]
    right = 0
    model.eval()
    with torch.no_grad():
        for a in range(0, len(test), 64):
            part = test[a: a + 64]
            ids, _ = _encode(tok, [(LABEL_TASK + r["prompt"], "") for r in part])
            lens = [len(tok(LABEL_TASK + r["prompt"], add_special_tokens=False)["input_ids"]) + 1
                    for r in part]
            logits = model(input_ids=ids).logits.float()
            for k, n in enumerate(lens):
                right += int(int(logits[k, n - 1, letters].argmax()) == gold[a + k])
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
    model = cfg.student(tok, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    model.train()

    def step(i: int) -> dict[str, str]:
        g = step_generator(seed, i)
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=g).tolist()
        batch = [train[j] for j in idx]
        loss = _task_loss(model, tok, [(LABEL_TASK + r["prompt"], r["label"]) for r in batch])
        if rationale:
            loss = loss + cfg.rationale_weight * _task_loss(
                model, tok, [(RATIONALE_TASK + r["prompt"], r["rationale"]) for r in batch])
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
    examples (a seeded subset, nested across fractions) and each seed."""
    cfg = config or DistillConfig()
    fr = [float(f) for f in fractions]
    if not fr or not all(0 < f <= 1 for f in fr):
        raise InputError(f"fractions must be in (0, 1], got {list(fractions)}")
    if not seeds:
        raise InputError("give at least one seed")
    if cfg.n_train < 10 or cfg.n_test < 1:
        raise InputError("distillation needs n_train >= 10 and n_test >= 1")
    test = distill_examples(cfg.n_test, 0, "test")
    acc: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    for f in fr:
        row: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for s in seeds:
            pool = distill_examples(cfg.n_train, s, "train")
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
