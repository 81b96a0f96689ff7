"""Ground-truth verification and per-task evaluation on a zoo model (plain ``transformers``).

Evidence by construction is not yet the model's mechanism, so an example's ground truth counts
only once the model confirms it (``Example.verified``):

1. the model answers correctly: with teacher forcing, the argmax at every target position is
   the target token;
2. deleting all evidence tokens (removing them from the sequence) makes the answer wrong;
3. deleting any single other *content* token (``Example.content`` and ``Example.shortcut``)
   keeps it right.

Non-content tokens, never deleted one by one: BOS, punctuation and fixed template words, and
the cue tokens (relation words, the queried key, the IOI subject, the induction match), which
are necessary by design but are not the evidence. All variants run as batched forward passes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lmxray.errors import InputError
from lmxray.result import Result
from lmxray.zoo import tasks
from lmxray.zoo._dataset import Example, to_examples
from lmxray.zoo._paths import model_path

__all__ = ["load", "correct", "verify", "evaluate", "ZooEvaluation"]


@dataclass(repr=False)
class ZooEvaluation(Result):
    """Per-task metrics of a zoo model (``lmxray.zoo.eval/1``, what ``lmxray zoo eval --json``
    writes): ``tasks`` maps a row name to ``{"metric", "value", "n", ...}`` (see
    :func:`evaluate`).

    Example:
        >>> ZooEvaluation.load("eval.json").show()  # doctest: +SKIP
    """

    FORMAT: ClassVar[str] = "lmxray.zoo.eval/1"

    model: str
    n: int
    seed: int
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "model": self.model, "n": self.n, "seed": self.seed,
                "tasks": self.tasks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooEvaluation:
        rows = data["tasks"]
        if not isinstance(rows, dict) or not all(
            isinstance(r, dict) and {"metric", "value", "n"} <= set(r) for r in rows.values()
        ):
            raise ValueError("'tasks' must map each task to its metric, value and n")
        return cls(model=str(data["model"]), n=int(data["n"]), seed=int(data["seed"]), tasks=rows)

    def __repr__(self) -> str:
        return f"ZooEvaluation(model={self.model!r}, tasks={list(self.tasks)!r})"


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, tokenizer


def load(path: str | Path | None = None):
    """``(model, tokenizer)`` of a zoo model folder (default: the shipped ``lmxray-tiny``)."""
    p = Path(path) if path is not None else model_path()
    if not (p / "config.json").is_file():
        raise InputError(
            f"no model at {p}: expected a folder with config.json; "
            "train one with `lmxray zoo train --out DIR`"
        )
    return _load_cached(str(p.resolve()), (p / "config.json").stat().st_mtime)


def _batches(n: int, lengths: Sequence[int], batch_tokens: int = 16384):
    order = sorted(range(n), key=lambda i: lengths[i])
    i = 0
    while i < n:
        size = max(1, batch_tokens // max(1, lengths[order[min(n - 1, i + 63)]]))
        yield order[i : i + min(size, 256)]
        i += min(size, 256)


def _score(model: Any, pad_id: int, seqs: Sequence[tuple[Sequence[int], Sequence[int]]]):
    """For each ``(prompt_ids, target_ids)``: (all target tokens argmax-correct, per-target CE)."""
    import torch
    import torch.nn.functional as F

    ok: list[bool] = [False] * len(seqs)
    ces: list[list[float]] = [[] for _ in seqs]
    lengths = [len(p) + len(t) for p, t in seqs]
    with torch.no_grad():
        for idx in _batches(len(seqs), lengths):
            L = max(lengths[i] for i in idx)
            x = torch.full((len(idx), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                s = [*seqs[i][0], *seqs[i][1]]
                x[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            logits = model(input_ids=x, attention_mask=mask).logits.float()
            for r, i in enumerate(idx):
                p, t = seqs[i]
                lg = logits[r, len(p) - 1 : len(p) + len(t) - 1]
                tt = torch.tensor(list(t))
                ok[i] = bool((lg.argmax(-1) == tt).all())
                ces[i] = F.cross_entropy(lg, tt, reduction="none").tolist()
    return ok, ces


def correct(model: Any, tokenizer: Any, examples: Sequence[Example]) -> list[bool]:
    """Whether the model answers each example (teacher-forced argmax on every target token)."""
    seqs = [
        (
            tokenizer(e.prompt)["input_ids"],
            tokenizer(e.target, add_special_tokens=False)["input_ids"],
        )
        for e in examples
    ]
    return _score(model, tokenizer.pad_token_id, seqs)[0]


def verify(examples: Sequence[Example], model: Any = None, tokenizer: Any = None) -> list[Example]:
    """Return copies of ``examples`` with ``verified`` set (see the module docstring).

    Examples without evidence get ``verified=None``.
    """
    if model is None or tokenizer is None:
        model, tokenizer = load()
    seqs: list[tuple[list[int], list[int]]] = []
    plan: list[tuple[int, int]] = []  # (start index into seqs, number of single deletions)
    for e in examples:
        ids = tokenizer(e.prompt)["input_ids"]
        tgt = tokenizer(e.target, add_special_tokens=False)["input_ids"]
        ev = set(e.evidence)
        singles = sorted((set(e.content) | set(e.shortcut)) - ev)
        plan.append((len(seqs), len(singles)))
        seqs.append((ids, tgt))
        seqs.append(([t for i, t in enumerate(ids) if i not in ev], tgt))
        seqs += [([t for i, t in enumerate(ids) if i != j], tgt) for j in singles]
    ok, _ = _score(model, tokenizer.pad_token_id, seqs)
    out = []
    for e, (s, k) in zip(examples, plan, strict=True):
        if not e.evidence:
            v: bool | None = None
        else:
            v = ok[s] and not ok[s + 1] and all(ok[s + 2 : s + 2 + k])
        out.append(dataclasses.replace(e, verified=v))
    return out


def _acc(flags: Sequence[bool]) -> float:
    return round(sum(flags) / max(1, len(flags)), 4)


def evaluate(
    model_path: str | Path | None = None, n: int = 500, seed: int = 0, verify_n: int = 0
) -> dict[str, dict[str, Any]]:
    """Per-task metrics of a zoo model on held-out data.

    Returns ``{row: {"metric": value, "n": count, ...}}`` with rows ``facts`` (every fact
    in every template), ``recall`` and ``recall-absent``, ``ioi``, ``sentiment`` (in
    distribution), ``sentiment-shift`` and ``induction`` (mean loss on the first and second
    repeat and their ratio). With ``verify_n > 0`` each task row also gets ``verified``: how
    many of ``verify_n`` test examples verify.
    """
    model, tok = load(model_path)
    res: dict[str, dict[str, Any]] = {}

    def acc_row(name: str, items: list[tasks.Item], **extra: Any) -> None:
        flags = correct(model, tok, to_examples(items, tok))
        res[name] = {"metric": "accuracy", "value": _acc(flags), "n": len(flags), **extra}

    acc_row("facts", tasks.generate("facts", n=None))
    acc_row("recall", tasks.generate("recall", "test", n, seed))
    acc_row("recall-absent", tasks.generate("recall", "test", n, seed, negatives=True))
    acc_row("ioi", tasks.generate("ioi", "test", n, seed))
    acc_row("sentiment", tasks.generate("sentiment", "test", n, seed))
    acc_row("sentiment-shift", tasks.generate("sentiment", "shift", n, seed))
    shift = [
        i
        for i in tasks.generate("sentiment", "shift", n, seed + 1)
        if i.meta["marker"] and i.label == "negative"
    ]
    acc_row("sentiment-marker-neg", shift)

    # induction: whole repeated sequences, loss on each repeat (first word of each excluded)
    seqs, lens = [], []
    for it in tasks.generate("induction", "test", n, seed):
        words = it.prompt.split()[: it.meta["length"]]
        ids = tok(" " + " ".join(words), add_special_tokens=False)["input_ids"]
        seqs.append(([tok.bos_token_id, ids[0]], ids[1:] + ids))
        lens.append(len(ids))
    ok_, ces = _score(model, tok.pad_token_id, seqs)
    first = [c for ce, L in zip(ces, lens, strict=True) for c in ce[: L - 1]]
    second = [c for ce, L in zip(ces, lens, strict=True) for c in ce[L:]]
    f, s = sum(first) / len(first), sum(second) / len(second)
    res["induction"] = {
        "metric": "loss ratio",
        "value": round(f / max(s, 1e-9), 2),
        "n": len(seqs),
        "loss_first": round(f, 4),
        "loss_second": round(s, 4),
        "copy_accuracy": _acc([math.exp(-c) > 0.5 for c in second]),
    }
    if verify_n > 0:
        for task in tasks.TASKS:
            ex = verify(to_examples(tasks.generate(task, "test", verify_n, seed), tok), model, tok)
            row = "sentiment" if task == "sentiment" else task
            res[row]["verified"] = sum(bool(e.verified) for e in ex)
            res[row]["verify_n"] = len(ex)
    return res
