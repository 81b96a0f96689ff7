"""Explanation-augmented prompting: AMPLIFY (Krishna et al. 2023, "Post Hoc Explanations of
Language Models Can Improve Language Models", arXiv 2305.11426).

AMPLIFY builds a few-shot prompt for a target model in four steps:

1. **select** demonstrations from a pool: examples the *target* model gets wrong, ranked by the
   misclassification confidence score ``MCS = log p(predicted wrong label) - log p(true label)``
   (highest first), taken round-robin over labels so that no label dominates the prompt;
2. **explain** each demonstration's *correct* answer with a *proxy* model and a post-hoc
   attribution method (gradient x input by default, the paper's best);
3. **rationalise**: the top-``k`` tokens become a rationale line ("The key words: "bad", "not"
   are important clues to predict "negative" as the correct answer.");
4. **prompt**: the demonstrations with their rationales and answers, then the query; the
   target model's answer is the candidate label with the highest log-probability.

The target model is any :class:`~lmxray.model.Model` or a black-box model (anything with
``score``, see :mod:`lmxray.blackbox`): only label log-probabilities are read. The proxy is a
``Model`` (any attribution method) or a black-box model (perturbation methods).
:func:`amplify_experiment` reports accuracy with AMPLIFY's rationales against two controls with
the *same* demonstrations: no rationale, and a rationale of ``k`` random tokens of the
demonstration — plus zero-shot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..examples import AnnotatedExample
from ..model import Model
from ._common import as_labelled, label_logprobs
from .results import CONDITIONS, AmplifyResult

__all__ = [
    "Demo",
    "AmplifyResult",
    "select_demos",
    "rationale_words",
    "build_prompt",
    "predict",
    "amplify_experiment",
    "RATIONALE_TEMPLATE",
]

RATIONALE_TEMPLATE = (
    'The key words: {words} are important clues to predict "{label}" as the correct answer.'
)


@dataclass(frozen=True)
class Demo:
    """One demonstration: the example, its MCS, whether the target got it wrong, and the
    rationale words of each condition."""

    example: AnnotatedExample
    mcs: float
    words: tuple[str, ...]
    random_words: tuple[str, ...] = ()
    wrong: bool = False


def predict(
    model: Any, prompts: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred [N] indices into labels, logprobs [N, K])``: the most likely label per prompt."""
    lp = label_logprobs(model, prompts, labels)
    return lp.argmax(1), lp


def _words(model: Any, ids: Sequence[int], skip: set[int]) -> list[tuple[int, str]]:
    """(position, text) of the word-like tokens (no special tokens, no pure punctuation)."""
    out = []
    for i, t in enumerate(ids):
        if t in skip:
            continue
        s = model.token_strings([t])[0].strip()
        if s and any(ch.isalnum() for ch in s):
            out.append((i, s))
    return out


def rationale_words(
    proxy: Any,
    examples: Sequence[AnnotatedExample],
    *,
    k: int = 5,
    method: str | None = None,
    **method_params: Any,
) -> list[tuple[str, ...]]:
    """The proxy's top-``k`` words (highest signed attribution to the correct answer), per example."""
    if k < 1:
        raise InputError(f"k (rationale words) must be at least 1, got {k}")
    method = method or ("input_x_gradient" if isinstance(proxy, Model) else "occlusion")
    res = proxy.attribute(
        [e.prompt for e in examples], [e.target for e in examples], method=method, **method_params
    )
    skip = set(getattr(proxy.tokenizer, "all_special_ids", []) or [])
    out = []
    for r in res:
        ids = list(r.source_ids[: len(r.source_ids) - len(r.target_ids)])
        s = np.nan_to_num(np.asarray(r.scores[0, : len(ids)], dtype=np.float64), nan=-np.inf)
        cand = _words(proxy, ids, skip)
        cand.sort(key=lambda p: (-s[p[0]], p[0]))
        words: list[str] = []
        for _, w in cand:
            if w not in words:
                words.append(w)
            if len(words) == k:
                break
        out.append(tuple(words))
    return out


def select_demos(
    target: Any, pool: Sequence[AnnotatedExample], labels: Sequence[str], n_shots: int, *, proxy: Any = None
) -> list[tuple[AnnotatedExample, float, bool]]:
    """Pool examples the target gets wrong, by MCS (of ``proxy`` when given, else of ``target``),
    taken round-robin over their true labels; correct ones fill up when too few are wrong.

    Returns:
        ``(example, mcs, target_wrong)`` per demonstration, wrong ones first.
    """
    pred, lp = predict(target, [e.prompt for e in pool], labels)
    gold = np.array([_label_index(e, labels) for e in pool])
    wrong = pred != gold
    if proxy is not None:
        _, lp = predict(proxy, [e.prompt for e in pool], labels)
    rows = np.arange(len(pool))
    masked = lp.copy()
    masked[rows, gold] = -np.inf
    mcs = masked.max(1) - lp[rows, gold]
    order = sorted(range(len(pool)), key=lambda i: (not wrong[i], -mcs[i], i))
    queues: dict[int, list[int]] = {}
    for i in order:
        queues.setdefault(int(gold[i]), []).append(i)
    picked: list[int] = []
    while len(picked) < n_shots and any(queues.values()):
        for lab in list(queues):  # labels in the order of their best candidate
            if queues[lab] and len(picked) < n_shots:
                picked.append(queues[lab].pop(0))
    picked.sort(key=lambda i: (not wrong[i], -mcs[i], i))
    return [(pool[i], float(mcs[i]), bool(wrong[i])) for i in picked]


def _label_index(e: AnnotatedExample, labels: Sequence[str]) -> int:
    for j, lab in enumerate(labels):
        if lab.strip() == e.target.strip():
            return j
    raise InputError(f"the target {e.target!r} is not one of the candidate labels {list(labels)}")


def build_prompt(
    demos: Sequence[Demo],
    query: str,
    *,
    condition: str = "amplify",
    sep: str = "\n\n",
    template: str = RATIONALE_TEMPLATE,
) -> str:
    """The few-shot prompt of ``condition`` (``amplify``, ``random rationale``, ``no rationale``,
    ``zero-shot``): each demonstration is ``[rationale line + " "] + prompt + target``."""
    if condition not in CONDITIONS:
        raise InputError(f"unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}")
    parts = []
    if condition != "zero-shot":
        for d in demos:
            words = (
                d.words
                if condition == "amplify"
                else d.random_words
                if condition == "random rationale"
                else ()
            )
            line = ""
            if words:
                quoted = ", ".join(f'"{w}"' for w in words)
                line = template.format(words=quoted, label=d.example.target.strip()) + " "
            parts.append(line + d.example.prompt + d.example.target)
    parts.append(query)
    return sep.join(parts)


def amplify_experiment(
    target: Any,
    pool: Sequence[Any],
    queries: Sequence[Any],
    *,
    proxy: Any = None,
    labels: Sequence[str] | None = None,
    n_shots: int = 4,
    k: int = 5,
    method: str | None = None,
    sep: str = "\n\n",
    template: str = RATIONALE_TEMPLATE,
    seed: int = 0,
    progress: bool = True,
    **method_params: Any,
) -> AmplifyResult:
    """Run AMPLIFY and its controls with the same demonstrations and report each accuracy.

    Args:
        target: the model to prompt (a ``Model`` or a black-box model).
        pool: candidate demonstrations (labelled examples).
        queries: evaluation examples.
        proxy: the model that explains the demonstrations (default: ``target``, which must then
            be a ``Model`` or allow a perturbation ``method``).
        labels: candidate answers with their leading space (default: the distinct targets).
        n_shots: demonstrations. k: rationale words per demonstration.
        method: attribution method of the proxy (default: input x gradient; occlusion for a
            black-box proxy).
        sep: text between demonstrations and before the query.
        seed: the random-rationale control's seed.
    """
    proxy = proxy if proxy is not None else target
    pool_l = as_labelled(pool, proxy)
    q_l = as_labelled(queries, target)
    labs = list(labels) if labels is not None else sorted({e.target for e in [*pool_l, *q_l]})
    if len(labs) < 2:
        raise InputError("AMPLIFY needs at least two candidate labels")
    if n_shots < 1:
        raise InputError(f"n_shots must be at least 1, got {n_shots}")
    if n_shots > len(pool_l):
        raise InputError(
            f"{n_shots} demonstrations cannot come from a pool of {len(pool_l)} examples; "
            "give fewer shots or a larger pool"
        )
    chosen = select_demos(
        target, pool_l, labs, n_shots, proxy=proxy if proxy is not target else None
    )
    n_wrong = int(
        np.sum(
            predict(target, [e.prompt for e in pool_l], labs)[0]
            != np.array([_label_index(e, labs) for e in pool_l])
        )
    )
    words = rationale_words(proxy, [e for e, _, _ in chosen], k=k, method=method, **method_params)
    rng = random.Random(seed)
    skip = set(getattr(proxy.tokenizer, "all_special_ids", []) or [])
    demos = []
    for (e, mcs, wrong), w in zip(chosen, words, strict=True):
        cand = list(dict.fromkeys(s for _, s in _words(proxy, proxy.encode(e.prompt), skip)))
        rnd = tuple(rng.sample(cand, min(len(w) or k, len(cand))))
        demos.append(Demo(e, mcs, w, rnd, wrong))
    gold = np.array([_label_index(e, labs) for e in q_l])
    acc: dict[str, float] = {}
    preds: dict[str, list[int]] = {}
    for cond in tqdm(CONDITIONS, desc="amplify", disable=not progress):
        prompts = [
            build_prompt(demos, e.prompt, condition=cond, sep=sep, template=template) for e in q_l
        ]
        pred, _ = predict(target, prompts, labs)
        acc[cond] = float(np.mean(pred == gold))
        preds[cond] = pred.tolist()
    return AmplifyResult(
        accuracy=acc,
        n=len(q_l),
        labels=labs,
        demos=[
            {
                "prompt": d.example.prompt,
                "target": d.example.target,
                "mcs": round(d.mcs, 4),
                "target_wrong": d.wrong,
                "words": list(d.words),
                "random_words": list(d.random_words),
            }
            for d in demos
        ],
        example_prompt=build_prompt(
            demos, q_l[0].prompt, condition="amplify", sep=sep, template=template
        ),
        model_name=getattr(target, "name", ""),
        proxy_name=getattr(proxy, "name", ""),
        info={
            "n_shots": n_shots,
            "k": k,
            "method": method,
            "seed": seed,
            "sep": sep,
            "n_wrong_in_pool": n_wrong,
            "n_wrong_demos": int(sum(d.wrong for d in demos)),
            "predictions": preds,
        },
    )
