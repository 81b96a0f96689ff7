"""The self-explanation runner: faithfulness tests over multiple-choice items, streamed to a
resumable JSONL file.

``run(model_or_generator, items, tests=("bias", "cot"), fmt=..., out="rows.jsonl")`` runs each
test (:data:`lmxray.selfexplain.tests.TESTS`: ``{"run", "aggregate", "flags"}`` per name) on
chunks of ``chunk_size`` items and appends each chunk's rows to ``out`` as soon as they are
computed, followed by a ``done`` record naming the chunk's items; the file is flushed and synced
after each chunk. The file is (re)started with the first chunk, so a run that fails before (an
unreachable endpoint) leaves no file. A run that is interrupted (Ctrl-C, a crash, a lost
endpoint) and started again with the same configuration skips the (test, item) pairs already
done: rows written after the last ``done`` record (a chunk cut short) are dropped and
recomputed, so no row is lost or repeated. A file written with another configuration is refused, not mixed.

Rows file (one JSON object per line)::

    {"kind": "header", "format": "lmxray.selfexplain-rows/1", "config": {...}}
    {"kind": "row", "test": "bias", "id": "q1", "variant": "biased", ...}   # a test's row
    {"kind": "done", "test": "bias", "ids": ["q1", ...], "retries": 0, "seconds": 1.2}

Tests must make each item's rows a function of the item (and the seed) alone, so that the chunk
size changes nothing but speed and memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, MethodError, choose_names
from ..io import (
    append_synced,
    atomic_write_text,
    check_output,
    cut_torn_tail,
    differing_keys,
    to_jsonable,
)
from ..model import Model
from ._types import Format, Generator, MCItem
from .data import to_items
from .formats import OrganismFormat, TurpinFormat
from .generate import LocalGenerator
from .report import SelfExplainReport
from .tests import TESTS

__all__ = ["run", "ROWS_FORMAT", "DEFAULT_TESTS", "as_generator", "default_format", "resolve_tests"]

ROWS_FORMAT = "lmxray.selfexplain-rows/1"
DEFAULT_TESTS = ("bias", "cot", "deletion", "attribution", "simulatability")
_RESERVED = ("kind",)


# --------------------------------------------------------------------------- rows file
class _RowsFile:
    """Append-only JSONL: a header, rows, and a ``done`` record closing each chunk."""

    def __init__(self, path: Path | None, header: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.done: set[tuple[str, str]] = set()
        self.retries = 0
        self.seconds: dict[str, float] = {}
        self._header: str | None = None
        if path is None:
            return
        if path.exists() and path.stat().st_size and resume:
            self._load(header)
            return
        check_output(path)
        # the file is (re)started with the first chunk: a run that fails before any row is
        # computed (an unreachable endpoint) leaves no file behind
        self._header = json.dumps(header) + "\n"

    def _write(self, text: str, mode: str = "a") -> None:
        """Append ``text`` (``mode="w"``: the file starts over with it, written atomically)."""
        assert self.path is not None
        try:
            (atomic_write_text if mode == "w" else append_synced)(self.path, text)
        except OSError as exc:
            raise InputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _records(self) -> tuple[list[dict[str, Any]], int]:
        """The records up to the last ``done`` (or the header) and the bytes they span."""
        assert self.path is not None
        records: list[dict[str, Any]] = []
        good = pos = kept = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn write
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not isinstance(rec, dict):
                    break
                pos += len(raw)
                records.append(rec)
                if len(records) == 1 or rec.get("kind") == "done":
                    good, kept = pos, len(records)
        return records[:kept], good

    def _load(self, header: dict[str, Any]) -> None:
        assert self.path is not None
        records, good = self._records()
        if not records or records[0].get("kind") != "header" or records[0].get("format") != ROWS_FORMAT:
            raise InputError(f"{self.path} is not an lmxray self-explain rows file; choose another --out")
        old, new = records[0].get("config", {}), header["config"]
        if old != new:
            raise InputError(f"{self.path} was written with another configuration (differs in: "
                             f"{differing_keys(old, new)}); use another --out, or --no-resume to start over")
        cut_torn_tail(self.path, good)  # rows of a chunk cut short are recomputed
        for rec in records[1:]:
            if rec.get("kind") == "row":
                self.rows.append({k: v for k, v in rec.items() if k != "kind"})
            elif rec.get("kind") == "done":
                self.done.update((rec["test"], i) for i in rec["ids"])
                self.retries += int(rec.get("retries") or 0)
                t = rec["test"]
                self.seconds[t] = self.seconds.get(t, 0.0) + float(rec.get("seconds") or 0.0)

    def commit(self, test: str, ids: list[str], rows: list[dict[str, Any]], retries: int,
               seconds: float) -> None:
        clean = [json.loads(json.dumps(to_jsonable(r), allow_nan=False)) for r in rows]
        done = {"kind": "done", "test": test, "ids": ids, "retries": retries, "seconds": seconds}
        if self.path is not None:
            text = "".join(json.dumps({"kind": "row", **r}) + "\n" for r in clean)
            if self._header is not None:
                self._write(self._header + text + json.dumps(done) + "\n", mode="w")
                self._header = None
            else:
                self._write(text + json.dumps(done) + "\n")
        self.rows.extend(clean)
        self.done.update((test, i) for i in ids)
        self.retries += retries
        self.seconds[test] = self.seconds.get(test, 0.0) + seconds


# --------------------------------------------------------------------------- inputs
def as_generator(model_or_generator: Any) -> Generator:
    """A :class:`Generator` from an lmxray Model (a :class:`LocalGenerator`) or a generator."""
    if isinstance(model_or_generator, Model):
        return LocalGenerator(model_or_generator)
    if callable(getattr(model_or_generator, "generate", None)) and callable(
            getattr(model_or_generator, "option_logprobs", None)):
        return model_or_generator  # type: ignore[no-any-return]
    raise InputError(f"run() needs an lmxray Model or a Generator (LocalGenerator, "
                     f"EndpointGenerator), got {type(model_or_generator).__name__}")


def default_format(gen: Generator, organism: bool = False) -> Format:
    """The organisms' format, or Turpin's prompt (with the local model's chat template when its
    tokenizer has one)."""
    if TurpinFormat is None or OrganismFormat is None:
        raise InputError("no prompt format available; pass fmt=")
    if organism:
        return OrganismFormat()  # type: ignore[no-any-return]
    model = getattr(gen, "model", None)
    if isinstance(model, Model) and getattr(model.tokenizer, "chat_template", None):
        return TurpinFormat(chat=model.chat)  # type: ignore[no-any-return]
    return TurpinFormat()  # type: ignore[no-any-return]


def resolve_tests(tests: str | Sequence[str], registry: Mapping[str, Any] | None = None) -> list[str]:
    """Test names from a list, a comma-separated string or ``"all"``, checked against the
    registry (default: the five tests)."""
    return choose_names(tests, TESTS if registry is None else registry, "test")


def _check_params(params: Mapping[str, Any] | None, chosen: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {t: {} for t in chosen}
    for t, p in (params or {}).items():
        if t not in out:
            raise InputError(f"params for {t!r}, which is not among the tests run ({', '.join(chosen)})")
        if not isinstance(p, Mapping):
            raise InputError(f"params[{t!r}] must be a dict of options")
        out[t] = dict(p)
    return out


def _config(gen: Generator, fmt: Format, chosen: list[str], params: dict[str, dict[str, Any]],
            items: list[MCItem], name: str, chunk_size: int) -> dict[str, Any]:
    gen_cfg = gen.config() if callable(getattr(gen, "config", None)) else {}  # type: ignore[attr-defined]
    return to_jsonable({
        "generator": {"name": getattr(gen, "name", type(gen).__name__), "kind": type(gen).__name__,
                      **gen_cfg},
        "format": getattr(fmt, "name", type(fmt).__name__), "tests": chosen, "params": params,
        "data": name, "items": [it.id for it in items], "chunk_size": chunk_size,
    })


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="item",
                desc="self-explain", dynamic_ncols=True, leave=True)


# --------------------------------------------------------------------------- run
def run(
    model_or_generator: Any,
    items: Any,
    tests: str | Sequence[str] = DEFAULT_TESTS,
    *,
    fmt: Format | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    chunk_size: int = 16,
    n: int | None = None,
    seed: int = 0,
    name: str = "items",
    registry: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
) -> SelfExplainReport:
    """Run faithfulness tests of self-explanations and aggregate them.

    Args:
        model_or_generator: an :class:`lmxray.Model` (generated in process, batched) or a
            generator (:class:`~lmxray.selfexplain.generate.EndpointGenerator` for a served model).
        items: :class:`MCItem` objects, dicts, a JSONL path (:mod:`lmxray.selfexplain.data`), or a
            function ``(n, seed) -> records`` such as :func:`lmxray.zoo.organisms.items`.
        tests: names in the registry (``bias``, ``cot``, ``deletion``, ``attribution``,
            ``simulatability``), a comma-separated string, or ``"all"``.
        fmt: the prompt format (default: :func:`default_format`).
        out: JSONL rows file; rows stream into it and a rerun resumes from it.
        resume: continue ``out`` if it exists (False: start it over).
        params: options per test, e.g. ``{"bias": {"kind": "suggested"}}``.
        chunk_size: items per call of a test (all their prompts are batched together).
        n, seed: how many items (and the seed) when ``items`` is a function.
        registry: ``{name: {"run", "aggregate", "flags"}}`` (default: the five tests).

    Returns:
        :class:`SelfExplainReport`: ``to_dataframe()``, ``aggregates``, ``verdicts``, ``show()``,
        ``to_html()``, ``to_parquet()``.
    """
    registry = TESTS if registry is None else registry
    chosen = resolve_tests(tests, registry)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    per_test = _check_params(params, chosen)
    gen = as_generator(model_or_generator)
    item_list = to_items(items, n=n, seed=seed)
    fmt = fmt if fmt is not None else default_format(gen)
    config = _config(gen, fmt, chosen, per_test, item_list, name, chunk_size)
    header = {"kind": "header", "format": ROWS_FORMAT, "config": config}
    store = _RowsFile(Path(out) if out is not None else None, header, resume)
    resumed = len(store.rows)
    todo = {t: [it for it in item_list if (t, it.id) not in store.done] for t in chosen}
    total = len(item_list) * len(chosen)
    bar = _progress(total, total - sum(map(len, todo.values())), progress)
    try:
        for t in chosen:
            for a in range(0, len(todo[t]), chunk_size):
                chunk = todo[t][a:a + chunk_size]
                _run_chunk(store, registry[t], t, gen, fmt, chunk, per_test[t])
                bar.update(len(chunk))
    finally:
        bar.close()
    return _report(store, registry, chosen, config, resumed, Path(out) if out is not None else None)


def _run_chunk(store: _RowsFile, spec: Mapping[str, Callable[..., Any]], test: str, gen: Generator,
               fmt: Format, chunk: list[MCItem], opts: dict[str, Any]) -> None:
    before = int(getattr(gen, "retries_total", 0) or 0)
    t0 = time.perf_counter()
    rows = spec["run"](gen, fmt, chunk, **opts)
    seconds = time.perf_counter() - t0
    ids = {it.id for it in chunk}
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MethodError(f"test {test!r} returned {type(rows).__name__}, not a list of row dicts")
    for r in rows:
        if r.get("test") != test or r.get("id") not in ids or any(k in r for k in _RESERVED):
            raise MethodError(f"test {test!r} returned a row for test {r.get('test')!r}, item "
                              f"{r.get('id')!r} (or with a reserved field 'kind')")
    retries = int(getattr(gen, "retries_total", 0) or 0) - before
    store.commit(test, [it.id for it in chunk], rows, retries, seconds)


def _finite(agg: Mapping[str, Any]) -> bool:
    """Whether an aggregate has data: its count ``n`` (when it has one) is not 0 and a value
    other than a count is a number."""
    if "n" in agg and not float(agg["n"][0]) > 0:
        return False
    return any(not math.isnan(float(v[0])) for k, v in agg.items()
               if k not in ("n", "parse_failed") and not k.startswith("n_") and v[0] is not None)


def _report(store: _RowsFile, registry: Mapping[str, Mapping[str, Callable[..., Any]]],
            chosen: list[str], config: dict[str, Any], resumed: int, path: Path | None
            ) -> SelfExplainReport:
    aggregates: dict[str, dict[str, tuple[float, float, float]]] = {}
    flags: dict[str, bool | None] = {}
    for t in chosen:
        rows = [r for r in store.rows if r.get("test") == t]
        agg = {k: tuple(float("nan") if x is None else float(x) for x in v)
               for k, v in registry[t]["aggregate"](rows).items()}
        aggregates[t] = agg  # type: ignore[assignment]
        flags[t] = bool(registry[t]["flags"](agg)) if rows and _finite(agg) else None
    info = {
        "retries": store.retries,
        "parse_failed": {t: sum(1 for r in store.rows if r.get("test") == t and r.get("parse_failed"))
                         for t in chosen},
        "seconds": {t: round(store.seconds.get(t, 0.0), 3) for t in chosen},
        "resumed_rows": resumed,
        "n_rows": len(store.rows),
    }
    return SelfExplainReport(rows=list(store.rows), aggregates=aggregates, flags=flags,
                             config=config, info=info, path=path)
