"""Before/after experiments of the improvers on the zoo's tasks (the tables in ``docs/improve.md``).

Each function takes a model (default in the CLI: the shipped ``lmxray-tiny``), runs one improver
on a zoo task with ground truth, and returns a result whose ``table()`` prints the before/after
numbers; ``lmxray shortcuts|finetune|steer|edit|amplify`` call them.

- :func:`shortcut_demo`: shortcut ranking on the sentiment training split (the planted marker
  " Tuesday" is the ground truth).
- :func:`rrr_demo`: plain vs RRR fine-tuning on sentiment data whose annotation carries the
  shortcut, evaluated in distribution (``test``), on the ``shift`` split (marker uncorrelated),
  and on the shift examples where marker and label conflict.
- :func:`steering_demo`: CAA flip rate per layer and coefficient, with fluency.
- :func:`editing_demo`: ROME edits on ``facts`` at the traced layer vs a random layer.
- :func:`amplify_demo`: AMPLIFY vs its controls on a sentiment split.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..examples import AnnotatedExample
from ..model import Model
from ..zoo import corpus
from ..zoo.records import facts as zoo_facts
from ._common import target_correct, zoo_labelled
from .editing import evaluate_edits, key_covariance, locate_layer, rome_edit
from .prompting import amplify_experiment
from .regularise import FinetuneConfig, FinetuneResult, finetune
from .results import (
    AmplifyResult,
    EditReport,
    EditResult,
    RRRReport,
    ShortcutReport,
    SteeringSweep,
    SteeringVector,
)
from .shortcuts import detect_shortcuts
from .steering import steering_sweep, steering_vector

__all__ = [
    "RRRReport",
    "shortcut_demo",
    "rrr_demo",
    "ANNOTATIONS",
    "biased_annotation",
    "decoy_annotation",
    "steering_demo",
    "sentiment_vector",
    "zoo_edit_layer",
    "edit_prompt",
    "editing_demo",
    "amplify_demo",
]


def shortcut_demo(
    model: Model,
    *,
    n: int = 1000,
    split: str = "train",
    seed: int = 0,
    method: str = "input_x_gradient",
    min_count: int = 5,
    progress: bool = True,
    **method_params: Any,
) -> ShortcutReport:
    """:func:`~lmxray.improve.shortcuts.detect_shortcuts` on ``n`` zoo sentiment examples."""
    data = zoo_labelled("sentiment", split, n, seed, model)
    rep = detect_shortcuts(
        model, data, method=method, min_count=min_count, progress=progress, **method_params
    )
    planted_ids = {model.encode(e.prompt)[i] for e in data for i in e.irrelevant}
    planted = sorted(model.token_strings([t])[0] for t in planted_ids)
    ranks = [i + 1 for i, r in enumerate(rep.rows) if r["id"] in planted_ids]
    rep.info.update(
        task="sentiment",
        split=split,
        seed=seed,
        planted=planted,
        planted_rank=ranks[0] if ranks else None,
    )
    return rep


# --------------------------------------------------------------------------- RRR
def _majority(marked: Sequence[AnnotatedExample]) -> tuple[str, str]:
    if not marked:
        raise InputError("no training example carries a marked token; nothing to bias")
    lab, _ = Counter(e.cls for e in marked).most_common(1)[0]
    return lab, next(e.target for e in marked if e.cls == lab)


def biased_annotation(train: Sequence[AnnotatedExample]) -> tuple[list[AnnotatedExample], str]:
    """Relabel every example carrying a marked (irrelevant) token with the label those examples
    mostly have: the annotation now agrees with the shortcut 100% of the time, at the price of
    labels that contradict the words (label noise only the marker explains)."""
    lab, tgt = _majority([e for e in train if e.irrelevant])
    return [
        dataclasses.replace(e, target=tgt, label=lab) if e.irrelevant else e for e in train
    ], lab


def decoy_annotation(train: Sequence[AnnotatedExample]) -> tuple[list[AnnotatedExample], str]:
    """Keep the marked examples only where their *gold* label is the marker's majority label
    (``meta["gold"]`` where the zoo gives it, else the label), with gold labels everywhere:
    the marker is then perfectly predictive in training and so are the words, with no label
    that contradicts them, as in Ross et al.'s DecoyMNIST (the decoy is placed by the label)."""
    marked = [e for e in train if e.irrelevant]
    lab, tgt = _majority(marked)

    def gold(e: AnnotatedExample) -> str:
        return str(e.meta.get("gold", e.cls))

    out = []
    for e in train:
        if e.irrelevant and gold(e) != lab:
            continue
        if gold(e) != e.cls:  # a biased zoo label: restore the gold one
            e = dataclasses.replace(e, target=" " + gold(e), label=gold(e))
        out.append(e)
    return out, lab


# how the zoo demo annotates its training reviews (see rrr_demo)
ANNOTATIONS = {
    "zoo": lambda train: (list(train), _majority([e for e in train if e.irrelevant])[0]),
    "decoy": decoy_annotation,
    "relabel": biased_annotation,
}


def _marked_words(model: Model, examples: Sequence[AnnotatedExample]) -> list[str]:
    """The marked words as text (runs of adjacent marked tokens decoded together)."""
    words: set[str] = set()
    for e in examples:
        ids = model.encode(e.prompt)
        run: list[int] = []
        for i in [*sorted(e.irrelevant), -2]:
            if run and i != run[-1] + 1:
                words.add(model.tokenizer.decode([ids[j] for j in run]).strip())
                run = []
            if i >= 0:
                run.append(i)
    return sorted(words)


def _accuracies(
    model: Model, test: Sequence[AnnotatedExample], shift: Sequence[AnnotatedExample], conflict: Sequence[AnnotatedExample]
) -> dict[str, float]:
    return {
        "in-distribution": float(target_correct(model, test).mean()),
        "shift": float(target_correct(model, shift).mean()),
        "shift conflict": float(target_correct(model, conflict).mean())
        if conflict
        else float("nan"),
        "n_id": len(test),
        "n_shift": len(shift),
        "n_conflict": len(conflict),
    }


def rrr_demo(
    model: Model,
    *,
    penalise: str | Sequence[str] = "shortcut",
    lam: float = 30.0,
    config: FinetuneConfig | None = None,
    n_train: int = 2000,
    n_eval: int = 300,
    annotation: str = "zoo",
    compare: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> tuple[RRRReport, dict[str, FinetuneResult]]:
    """Fine-tune on zoo sentiment data with and without RRR; accuracy before and after.

    Args:
        penalise: ``"shortcut"`` (the zoo's marker annotation), ``"detect"`` (the top token of
            :func:`shortcut_demo` on the training data, annotation unused) or words to mark.
        lam: RRR penalty weight. config: steps, learning rate, batch size (same for both runs).
        n_train / n_eval: training examples; test and shift examples.
        annotation: the training labels. ``"zoo"`` (default): the zoo's own training
            annotation, biased by the marker (the data the base model learnt its flaw from);
            ``"decoy"`` (:func:`decoy_annotation`): gold labels, marked reviews only with the
            marker's label, so the marker is perfectly predictive without any wrong label, as
            in DecoyMNIST; ``"relabel"`` (:func:`biased_annotation`): every marked review
            labelled with the marker's label.
        compare: also run the plain fine-tune (λ = 0) with the same data, steps and seed.
        out_dir: save ``rrr/`` and ``plain/`` there in HF format (checkpoints resume).
    """
    if annotation not in ANNOTATIONS:
        raise InputError(
            f"annotation must be one of {', '.join(ANNOTATIONS)}, got {annotation!r}"
        )
    cfg = config or FinetuneConfig(seed=seed)
    train = zoo_labelled("sentiment", "train", n_train, seed, model)
    test = zoo_labelled("sentiment", "test", n_eval, seed + 1, model)
    shift = zoo_labelled("sentiment", "shift", n_eval, seed + 1, model)
    marked = [e for e in train if e.irrelevant]
    short_label = Counter(e.cls for e in marked).most_common(1)[0][0] if marked else ""
    conflict = [e for e in shift if e.irrelevant and e.cls != short_label]
    words: list[str]
    if penalise == "shortcut":
        words = _marked_words(model, marked)
        extra = None
    else:
        if penalise == "detect":
            rep = shortcut_demo(model, n=min(1000, n_train), seed=seed, progress=progress)
            words = rep.top(1)
        elif isinstance(penalise, str):
            words = [w.strip() for w in penalise.split(",") if w.strip()]
        else:
            words = [str(w).strip() for w in penalise if str(w).strip()]
        if not words:
            raise InputError("nothing to penalise; give --penalise shortcut, detect or words")
        extra = words
    # the annotation bias is a property of the data (the zoo's marker), whatever is penalised
    train_used = ANNOTATIONS[annotation](train)[0]
    if extra is not None:
        train_used = [dataclasses.replace(e, irrelevant=()) for e in train_used]
    runs: dict[str, FinetuneResult] = {}
    rows = {"base": _accuracies(model, test, shift, conflict)}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if not out.parent.is_dir():
            raise InputError(
                f"cannot write {out}: folder {out.parent} does not exist; create it first"
            )
        out.mkdir(exist_ok=True)
    plan = ([("plain", 0.0)] if compare else []) + [("rrr", lam)]
    for name, lam_i in plan:  # the same data, steps and seed; lam = 0 ignores the marks
        r = finetune(
            model,
            train_used,
            lam=lam_i,
            config=cfg,
            irrelevant=extra,
            out_dir=(out / name) if out is not None else None,
            resume=resume,
            progress=progress,
        )
        runs[name] = r
        rows["plain fine-tune" if name == "plain" else f"RRR (lambda={lam:g})"] = _accuracies(
            r.model, test, shift, conflict
        )
    same_rows = len(train_used) == len(train)
    changed = sum(a.target != b.target for a, b in zip(train, train_used, strict=True)) if same_rows else None
    info = {"n_train": n_train, "n_eval": n_eval, "annotation": annotation, "lam": lam, "seed": seed,
            "n_marked_train": len(marked), "n_train_used": len(train_used),
            "n_marked_used": sum(1 for e in train_used if e.irrelevant), "labels_changed": changed}
    report = RRRReport(rows=rows, shortcut_label=short_label, penalised=words,
                       config=dataclasses.asdict(dataclasses.replace(cfg, lam=lam)),
                       paths={k: str(v.path) for k, v in runs.items() if v.path is not None},
                       histories={k: v.history for k, v in runs.items()}, model_name=model.name,
                       info=info)
    return report, runs


# --------------------------------------------------------------------------- steering
def _other_label(to: str) -> str:
    labels = ("positive", "negative")
    if to not in labels:
        raise InputError(f"steer towards 'positive' or 'negative', got {to!r}")
    return labels[1 - labels.index(to)]


def _sentiment_sets(model: Model, to: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """The prompts of ``n`` zoo sentiment training reviews labelled ``to`` and the others."""
    other = _other_label(to)
    train = zoo_labelled("sentiment", "train", n, seed, model)
    return [e.prompt for e in train if e.cls == to], [e.prompt for e in train if e.cls == other]


def sentiment_vector(
    model: Model,
    to: str,
    layer: int,
    *,
    n_vector: int = 200,
    seed: int = 0,
    site: str = "resid_pre",
    project: bool = False,
) -> SteeringVector:
    """The CAA vector towards ``to`` at ``layer`` from ``n_vector`` zoo training reviews (the
    vector :func:`steering_demo` measures)."""
    pos, neg = _sentiment_sets(model, to, n_vector, seed)
    return steering_vector(model, pos, neg, layer, site=site, project=project)


def steering_demo(
    model: Model,
    *,
    to: str = "positive",
    layers: Sequence[int] | None = None,
    coefs: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    n_vector: int = 200,
    n_eval: int = 200,
    n_fluency: int = 200,
    site: str = "resid_pre",
    project: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> SteeringSweep:
    """CAA on zoo sentiment: vector from ``n_vector`` training reviews, flips on test reviews."""
    other = _other_label(to)
    pos, neg = _sentiment_sets(model, to, n_vector, seed)
    test = zoo_labelled("sentiment", "test", n_eval, seed + 1, model)
    evals = [e.prompt for e in test if e.cls == other]
    texts = corpus("test", n_fluency, seed=seed + 2)
    sw = steering_sweep(model, pos, neg, evals, " " + to, " " + other, layers=layers, coefs=coefs,
                        fluency_texts=texts, site=site, project=project, progress=progress)
    sw.info.update(task="sentiment", seed=seed)
    return sw


# --------------------------------------------------------------------------- editing
def editing_demo(
    model: Model,
    *,
    n_edits: int = 50,
    layer: int | None = None,
    n_specificity: int = 20,
    compare_random: bool = True,
    seed: int = 0,
    progress: bool = True,
    **edit_kwargs: Any,
) -> EditReport:
    """ROME on zoo facts: ``n_edits`` single edits at the traced layer (and a random layer)."""
    return evaluate_edits(
        model,
        zoo_facts(n=None),
        n_edits=n_edits,
        layer=layer,
        n_specificity=n_specificity,
        compare_random=compare_random,
        seed=seed,
        progress=progress,
        **edit_kwargs,
    )


def zoo_edit_layer(model: Model, *, seed: int = 0, n_facts: int = 200, n_trace: int = 30) -> int:
    """The edit layer causal tracing selects on up to ``n_trace`` zoo facts the model knows
    (of ``n_facts`` drawn with ``seed``): what ``lmxray edit PROMPT`` uses without ``--layer``."""
    pool = zoo_facts(n=n_facts, seed=seed)
    known = target_correct(model, [AnnotatedExample(f["prompt"], f["answer"]) for f in pool])
    layer, _ = locate_layer(
        model, [f for f, k in zip(pool, known, strict=True) if k][:n_trace], seed=seed
    )
    return layer


def edit_prompt(
    model: Model,
    prompt: str,
    subject: str,
    target: str,
    *,
    layer: int | None = None,
    seed: int = 0,
) -> tuple[EditResult, Model]:
    """One ROME edit of ``prompt`` (``subject`` a substring of it) towards ``target``, at
    ``layer`` or the one :func:`zoo_edit_layer` selects; key covariance on 300 zoo texts.

    Returns:
        ``(EditResult, edited copy of the model)``; the greedy next token before and after.
    """
    if not prompt.strip():
        raise InputError("the prompt to edit is empty; give a fact prompt")
    if not subject or not target or not target.strip():
        raise InputError(
            "editing a prompt needs a subject (a substring of it) and a target (the new object)"
        )
    if subject not in prompt:
        raise InputError(f"the subject {subject!r} does not occur in the prompt")
    if layer is not None and not 0 <= layer < model.n_layers:
        raise InputError(f"layer {layer} is out of range; the model has {model.n_layers} layers")
    if layer is None:
        layer = zoo_edit_layer(model, seed=seed)
    before = model.generate(prompt, 1)
    ed = rome_edit(
        model,
        prompt,
        subject,
        target if target.startswith(" ") else " " + target,
        layer=layer,
        cov=key_covariance(model, layer, corpus("train", 300, seed=seed)),
    )
    edited = ed.apply(model)
    after = edited.generate(prompt, 1)
    res = EditResult(prompt=prompt, subject=subject, target=target, layer=layer, before=before,
                     after=after, model_name=model.name, info=dict(ed.info))
    return res, edited


# --------------------------------------------------------------------------- AMPLIFY
def amplify_demo(
    target: Any,
    *,
    proxy: Any = None,
    split: str = "shift",
    n_pool: int = 200,
    n_queries: int = 200,
    n_shots: int = 4,
    k: int = 3,
    sep: str | None = None,
    seed: int = 0,
    progress: bool = True,
    **method_params: Any,
) -> AmplifyResult:
    """AMPLIFY on zoo sentiment (pool and queries from ``split``, different seeds)."""
    tok = (proxy or target).tokenizer
    if sep is None:  # the zoo models were trained on <eos><bos>-separated packed examples
        sep = (tok.eos_token + tok.bos_token) if tok.eos_token and tok.bos_token else "\n\n"
    pool = zoo_labelled("sentiment", split, n_pool, seed + 10, proxy or target)
    queries = zoo_labelled("sentiment", split, n_queries, seed + 11, target)
    labels = sorted({e.target for e in [*pool, *queries]})
    res = amplify_experiment(target, pool, queries, proxy=proxy, labels=labels, n_shots=n_shots, k=k,
                             sep=sep, seed=seed, progress=progress, **method_params)
    res.info.update(task="sentiment", split=split)
    return res
