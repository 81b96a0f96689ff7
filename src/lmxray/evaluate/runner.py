"""The benchmark runner: methods x metrics over a set of examples, streamed and resumable.

``evaluate(model, examples, methods=[...], metrics=[...], out="results.jsonl")`` explains every
example with every method and judges each explanation; each (example, method) pair becomes one
row, a pure function of the example (so the same code can later run data-parallel). Rows are
appended to a JSONL file as they are computed, one chunk of examples at a time, and flushed to
disk; a run that is interrupted (Ctrl-C, SIGINT, a crash) and started again with the same
configuration skips the pairs already in the file, so no row is lost or duplicated. The first
line of the file is a header with the configuration; a file written with another configuration
is refused instead of being mixed.

Metric groups: ``faithfulness`` (:mod:`~lmxray.evaluate.faithfulness`), ``plausibility``
(needs a ``rationale`` per example), ``groundtruth`` (needs ``evidence``; examples are verified
first, see :func:`~lmxray.evaluate.groundtruth.verify_evidence`, and ground-truth metrics count
verified examples only), and ``sanity`` (the cascading randomisation check per method, on the
first ``sanity_examples`` examples). Individual faithfulness metric names are accepted too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..attribution.api import attribute
from ..attribution.base import methods as registered_methods
from ..attribution.verify import verify as verify_attribution
from ..attribution.verify import verify_kwargs
from ..errors import InputError, choose_names
from ..io import (
    append_synced,
    atomic_write_text,
    check_output,
    cut_torn_tail,
    differing_keys,
    dumps,
    to_jsonable,
)
from ..model import Model
from .data import Example, to_examples
from .faithfulness import DEFAULT_BINS, FAITHFULNESS_METRICS, faithfulness
from .groundtruth import evidence_recovery, verify_evidence
from .plausibility import plausibility
from .report import RESULTS_FORMAT, Evaluation, read_results
from .sanity import sanity_check

__all__ = ["evaluate", "METRIC_GROUPS", "DEFAULT_METRICS", "RESULTS_FORMAT", "DEFAULT_METHOD_PARAMS"]

METRIC_GROUPS = ("faithfulness", "plausibility", "groundtruth", "sanity")
# what runs when no metric is named: every group but the (slow) sanity check; "all" adds it
DEFAULT_METRICS = ("faithfulness", "plausibility", "groundtruth")
# Defaults that keep a benchmark sweep affordable; override with method_params.
DEFAULT_METHOD_PARAMS: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": 32}}


def _resolve_methods(methods: str | Sequence[str]) -> list[str]:
    return choose_names(methods, registered_methods(), "method")


def _resolve_metrics(metrics: str | Sequence[str] | None) -> tuple[set[str], list[str] | None]:
    """(groups, faithfulness metric subset or None for all). ``None``: :data:`DEFAULT_METRICS`;
    ``"all"``: every group, the sanity check included."""
    if metrics is None:
        return set(DEFAULT_METRICS), None
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    groups: set[str] = set()
    faith: list[str] = []
    if "all" in metrics:
        metrics = [*METRIC_GROUPS, *(m for m in metrics if m != "all")]
    for m in metrics:
        if m in METRIC_GROUPS:
            groups.add(m)
        elif m in FAITHFULNESS_METRICS:
            groups.add("faithfulness")
            faith.append(m)
        else:
            raise InputError(
                f"unknown metric {m!r}; choose from {', '.join(METRIC_GROUPS + FAITHFULNESS_METRICS)}"
            )
    if not groups:
        raise InputError("no metric chosen")
    if "faithfulness" in groups and (not faith or "faithfulness" in metrics):
        return groups, None
    return groups, faith or None


class _ResultsFile:
    """Append-only JSONL with a header line; tolerant of a torn last line.

    Nothing is written until the first records are: the header and the first rows go in one
    atomic write (so a run that fails before its first row leaves no header-only file, and
    ``resume=False`` leaves an old file as it was until new rows replace it); later records are
    appended and flushed to disk.
    """

    def __init__(self, path: Path, header: dict[str, Any], resume: bool) -> None:
        self.path = check_output(path)
        self.header = header
        self.rows: list[dict[str, Any]] = []
        self.sanity: list[dict[str, Any]] = []
        self.started = False
        if resume and path.is_file() and path.stat().st_size:
            self._load(header)

    def _load(self, header: dict[str, Any]) -> None:
        records, good_bytes = read_results(self.path)
        if records[0].get("config") != header["config"]:
            diff = differing_keys(records[0].get("config", {}), header["config"])
            raise InputError(
                f"{self.path} was written with another configuration (differs in: "
                f"{diff}); use another --out, or --no-resume to start over"
            )
        cut_torn_tail(self.path, good_bytes)
        for rec in records[1:]:
            self._keep(rec)
        self.started = True

    def _keep(self, rec: dict[str, Any]) -> None:
        (self.sanity if rec.get("kind") == "sanity" else self.rows).append(rec)

    def done(self) -> set[tuple[str, str]]:
        return {(r["example"], r["method"]) for r in self.rows}

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        plain = [json.loads(dumps(r)) for r in records]
        text = "".join(dumps(r) + "\n" for r in plain)
        if not self.started:
            atomic_write_text(self.path, dumps(self.header) + "\n" + text)
            self.started = True
        else:
            append_synced(self.path, text)
        for r in plain:
            self._keep(r)


class _Memory(_ResultsFile):
    def __init__(self) -> None:  # noqa: D401 - no file
        self.rows, self.sanity = [], []

    def append(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self._keep(json.loads(dumps(r)))


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="expl",
                desc="evaluate", dynamic_ncols=True, leave=True)


def evaluate(
    model: Model,
    examples: Sequence[Any],
    *,
    methods: str | Sequence[str] = "all",
    metrics: str | Sequence[str] | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    batch_size: int = 8,
    sanity_examples: int = 4,
    removal: str = "remove",
    baseline: Any = "auto",
    bins: Sequence[float] = DEFAULT_BINS,
    n_steps: int = 20,
    progress: bool = True,
    name: str = "examples",
    verify: bool | dict[str, Any] = False,
    executor: Any = None,
) -> Evaluation:
    """Explain every example with every method and judge the explanations.

    Args:
        model: the model to explain.
        examples: :class:`~lmxray.evaluate.data.Example` objects, dicts or objects with
            ``prompt``/``target`` and optional ``rationale``/``evidence``/``spans`` (see
            :mod:`lmxray.evaluate.data`), e.g. ``lmxray.zoo.tasks.generate("facts")``.
        methods: method names or ``"all"`` (every registered method, ``random`` included).
        metrics: groups (``faithfulness``, ``plausibility``, ``groundtruth``, ``sanity``),
            faithfulness metric names, or ``"all"`` (every group, ``sanity`` included); default
            (None): every group but ``sanity``.
        method_params: per-method parameters, e.g. ``{"integrated_gradients": {"n_steps": 64}}``.
        out: JSONL results file; rows stream into it and a rerun resumes from it.
        resume: continue ``out`` if it exists (False: start it over).
        batch_size: examples explained together.
        sanity_examples: examples used by the sanity check.
        removal, baseline, bins, n_steps: faithfulness parameters.
        verify: also verify every explanation (:func:`lmxray.attribution.verify.verify`; True or
            a dict of its parameters): rows get ``verdict_faithful``, ``verdict_stable``,
            ``verdict_passed`` and ``verdict_p``, the leaderboard their rates per method.
        executor: where the chunks of examples run (``executor.map(fn, units)``, results in
            order): ``None`` here, or :class:`lmxray.jobs.RayExecutor` (one model per actor).
            The rows are the same either way.

    Returns:
        :class:`~lmxray.evaluate.report.Evaluation`: ``to_dataframe()``, ``leaderboard()``,
        ``show()``, ``to_csv()``, ``to_html()``, ``to_png()``.
    """
    chosen = _resolve_methods(methods)
    groups, faith_metrics = _resolve_metrics(metrics)
    for arg, v in (("batch_size", batch_size), ("sanity_examples", sanity_examples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{arg} must be a positive integer, got {v!r}")
    exs = to_examples(model, examples)
    if not exs:
        raise InputError("no examples to evaluate")
    params = {m: dict(DEFAULT_METHOD_PARAMS.get(m, {})) for m in chosen}
    for m, p in (method_params or {}).items():
        if m in params:
            params[m].update(p)
    faith_kw = {"removal": removal, "baseline": baseline, "bins": list(bins), "n_steps": n_steps,
                "metrics": faith_metrics}
    verify_kw = verify_kwargs(verify)
    config = to_jsonable({
        "model": model.name, "data": name, "methods": chosen, "groups": sorted(groups),
        "method_params": params, "faithfulness": faith_kw, "sanity_examples": sanity_examples,
        "examples": [e.id for e in exs],
        **({"verify": verify_kw} if verify_kw is not None else {}),
    })
    header = {"kind": "header", "format": RESULTS_FORMAT, "config": config}
    store: _ResultsFile = _ResultsFile(Path(out), header, resume) if out is not None else _Memory()
    done = store.done()
    total = len(exs) * len(chosen)
    bar = _progress(total, len(done & {(e.id, m) for e in exs for m in chosen}), progress)
    try:
        chunks = [exs[start:start + batch_size] for start in range(0, len(exs), batch_size)]
        units = [(c, [(e.id, m) for e in c for m in chosen if (e.id, m) in done], chosen, params, groups,
                  faith_kw, verify_kw) for c in chunks if not all((e.id, m) in done for e in c for m in chosen)]
        for rows in _map(executor, model, _chunk_rows, units):
            store.append(rows)
            bar.update(len(rows))
        if "sanity" in groups:
            have = {r["method"] for r in store.sanity}
            todo = [(exs[:sanity_examples], m, params[m]) for m in chosen if m not in have]
            for row in _map(executor, model, _sanity_unit, todo):
                store.append([row])
    finally:
        bar.close()
    return Evaluation(rows=store.rows, sanity=store.sanity, config=config,
                      path=Path(out) if out is not None else None)


def _verdict_columns(model: Model, a: Any, verify_kw: dict[str, Any]) -> dict[str, Any]:
    v = verify_attribution(model, a, **verify_kw)
    return {"verdict_faithful": v.checks.get("faithful"), "verdict_stable": v.checks.get("stable"),
            "verdict_passed": v.passed, "verdict_p": v.p_value, "verdict": v.verdict}


def _map(executor: Any, model: Model, fn: Any, units: list[Any]) -> Any:
    """``fn(model, unit)`` per unit in order: here, or on ``executor`` (see :mod:`lmxray.jobs`)."""
    return (fn(model, u) for u in units) if executor is None else executor.map(fn, units)


def _chunk_rows(model: Model, unit: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Every row still missing for one chunk of examples (a pure function of its unit)."""
    chunk, done_list, chosen, params, groups, faith_kw, verify_kw = unit
    done = {tuple(d) for d in done_list}
    verified = _verify(model, chunk) if "groundtruth" in groups else [None] * len(chunk)
    rows: list[dict[str, Any]] = []
    for m in chosen:
        todo = [(e, v) for e, v in zip(chunk, verified, strict=True) if (e.id, m) not in done]
        if todo:
            rows += _rows(model, [e for e, _ in todo], [v for _, v in todo], m, params[m], groups, faith_kw,
                          verify_kw)
    return rows


def _sanity_unit(model: Model, unit: tuple[Any, ...]) -> dict[str, Any]:
    return _sanity_row(model, *unit)


def _verify(model: Model, chunk: list[Example]) -> list[bool | None]:
    out: list[bool | None] = [e.verified for e in chunk]
    need = [i for i, e in enumerate(chunk) if e.verified is None and e.evidence]
    if need:
        got = verify_evidence(
            model, [chunk[i].prompt for i in need], [chunk[i].target for i in need],
            [chunk[i].evidence for i in need], [chunk[i].content for i in need],
        )
        for i, v in zip(need, got, strict=True):
            out[i] = v
    return out


def _rows(
    model: Model,
    chunk: list[Example],
    verified: list[bool | None],
    method: str,
    params: dict[str, Any],
    groups: set[str],
    faith_kw: dict[str, Any],
    verify_kw: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    attrs = attribute(model, [e.prompt for e in chunk], [e.target for e in chunk],
                      method=method, **params)
    assert isinstance(attrs, list)
    t_attr = (time.perf_counter() - t0) / len(chunk)
    faith = faithfulness(model, attrs, **faith_kw) if "faithfulness" in groups else None
    rows = []
    for i, (e, a) in enumerate(zip(chunk, attrs, strict=True)):
        row: dict[str, Any] = {"kind": "row", "example": e.id, "method": method,
                               "n_target": len(a.target_tokens), "attribution_seconds": t_attr}
        if faith is not None:
            f = faith[i]
            row.update(f.summary())
            if f.deletion is not None:
                row["deletion_curve"] = np.nanmean(f.deletion, axis=0)
            if f.insertion is not None:
                row["insertion_curve"] = np.nanmean(f.insertion, axis=0)
        if "plausibility" in groups and e.rationale:
            row.update(plausibility(a, e.rationale, model=model))
        if "groundtruth" in groups and e.evidence:
            row.update(evidence_recovery(a, e.evidence, model=model))
            row["verified"] = verified[i]
        if verify_kw is not None:
            row.update(_verdict_columns(model, a, verify_kw))
        rows.append(row)
    return rows


def _sanity_row(model: Model, subset: list[Example], method: str, params: dict[str, Any]) -> dict[str, Any]:
    r = sanity_check(model, [e.prompt for e in subset], [e.target for e in subset],
                     method=method, **params)
    return {"kind": "sanity", "method": method, "stages": r.stages, "spearman": r.spearman,
            "spearman_abs": r.spearman_abs, "final": r.final, "passed": r.passed,
            "n_examples": len(subset)}
