"""Attribution over a dataset: rows in (JSONL), one attribution per row out (JSONL or Parquet).

``attribute_dataset(model, rows, method=..., out="attr.jsonl")`` explains every row's
``prompt`` / ``target`` with one method, a chunk of ``batch_size`` rows at a time, in process or
on an executor (:class:`~lmxray.jobs.cluster.RayExecutor`), and streams the results in row order:

- ``.jsonl``: a header line (format, model, method, parameters, a fingerprint of the rows),
  then one line per row: ``{"kind": "row", "index", "id", "attribution": {...}}`` (the
  attribution as :meth:`Attribution.to_dict`). A rerun with the same options skips the rows
  already in the file (a line cut by an interruption is dropped); a file of another run is
  refused.
- ``.parquet`` (pyarrow): rows stream into ``<out>.partial.jsonl`` (resumable as above); at the
  end the Parquet file is written atomically (columns ``index``, ``id``, ``prompt``, ``target``,
  ``method``, ``source_tokens``, ``target_tokens``, ``scores`` ``[T][S]`` and ``attribution``,
  the full JSON) and the partial file is removed.

:func:`read_attributions` reads either back as :class:`~lmxray.result.Attribution` objects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..attribution.api import attribute
from ..attribution.base import get_method
from ..errors import InputError
from ..io import (
    append_synced,
    atomic_write_text,
    atomic_write_with,
    check_output,
    cut_torn_tail,
    differing_keys,
    dumps,
    read_jsonl,
)
from ..model import Model
from ..result import Attribution
from .executor import Executor, run_units

__all__ = ["attribute_dataset", "read_attributions", "read_rows", "ROWS_FORMAT", "AttributionRows"]

ROWS_FORMAT = "lmxray.attribution-rows/1"
OUT_SUFFIXES = (".jsonl", ".parquet")


class AttributionRows(list):  # type: ignore[type-arg]
    """The attributions of a dataset job, in row order (a list), with ``path`` and ``info``."""

    def __init__(self, items: Sequence[Attribution], path: Path | None, info: dict[str, Any]) -> None:
        super().__init__(items)
        self.path = path
        self.info = info


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL dataset: objects with a non-empty ``prompt`` and an optional ``target``
    (string) and ``id``; one-line errors name the line."""
    rows = read_jsonl(path, what="dataset", hint="; give a JSONL file with one {\"prompt\": ...} per line")
    for k, r in enumerate(rows, 1):
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise InputError(f"{path}: row {k} has no prompt (a non-empty string); every row needs \"prompt\"")
        if r.get("target") is not None and (not isinstance(r["target"], str) or not r["target"]):
            raise InputError(f"{path}: row {k} has a target that is not a non-empty string; fix or drop it")
    return rows


def _out_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise InputError(f"cannot tell the output format of {out}; name it *.jsonl or *.parquet")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError("Parquet output needs pyarrow: pip install pyarrow (or write *.jsonl)")
    return suffix[1:]


class _Stream:
    """The streamed JSONL of a job: header line, then one line per finished row."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool) -> None:
        self.path, self.header = path, json.loads(dumps(header))
        self.done: dict[int, dict[str, Any]] = {}
        if resume and path.is_file() and path.stat().st_size:
            self._read()
        self.fresh = not self.done

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        try:
            head = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            head = None
        if not isinstance(head, dict) or head.get("format") != ROWS_FORMAT:
            raise InputError(f"{self.path} is not an attribution-rows file; give a new --out or --no-resume")
        if head != self.header:
            diff = differing_keys(head["config"], self.header["config"])
            raise InputError(f"{self.path} was written by another run (differs in: {diff}); "
                             "use another --out, or --no-resume to start over")
        good = len(lines[0]) + 1
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break  # the line an interruption cut
            self.done[int(row["index"])] = row
            good += len(line) + 1
        cut_torn_tail(self.path, good)

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (the first ones go out with the header in one atomic write)."""
        text = "".join(dumps(r) + "\n" for r in rows)
        if self.fresh:
            atomic_write_text(self.path, dumps(self.header) + "\n" + text)
        else:
            append_synced(self.path, text)
        self.fresh = False
        self.done.update((int(r["index"]), json.loads(dumps(r))) for r in rows)


def _attribute_unit(model: Model, unit: tuple[Any, ...]) -> list[dict[str, Any]]:
    """One chunk of rows: ``[(index, id, prompt, target)]`` → one record per row."""
    rows, method, params = unit
    attrs = attribute(model, [r[2] for r in rows], [r[3] for r in rows] if rows[0][3] is not None else None,
                      method=method, **params)
    assert isinstance(attrs, list)
    return [{"kind": "row", "index": i, "id": rid, "prompt": p, "target": t, "attribution": a.to_dict()}
            for (i, rid, p, t), a in zip(rows, attrs, strict=True)]


def _chunks(items: list[tuple[int, str, str, str | None]], batch_size: int) -> Iterator[list[Any]]:
    """Chunks of ``batch_size`` rows; rows with and without a target are never mixed."""
    chunk: list[Any] = []
    for it in items:
        if chunk and (len(chunk) == batch_size or (chunk[0][3] is None) != (it[3] is None)):
            yield chunk
            chunk = []
        chunk.append(it)
    if chunk:
        yield chunk


def attribute_dataset(
    model: Model,
    rows: Sequence[dict[str, Any]] | str | os.PathLike[str],
    *,
    method: str = "integrated_gradients",
    params: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    batch_size: int = 8,
    executor: Executor | None = None,
    progress: bool = False,
) -> AttributionRows:
    """One attribution per row, streamed to ``out`` in row order and resumable (see the module).

    Args:
        rows: a JSONL path or dicts with ``prompt``, optional ``target`` and ``id``.
        method, params: the attribution method and its parameters (``n_steps``...).
        out: ``*.jsonl`` or ``*.parquet``; ``None``: nothing written.
        executor: ``None`` (here) or a :class:`~lmxray.jobs.cluster.RayExecutor`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive whole number, got {batch_size!r}")
    data = read_rows(rows) if isinstance(rows, str | os.PathLike) else list(rows)
    if not data:
        raise InputError("no rows to attribute")
    spec = get_method(method)
    params = dict(params or {})
    spec.resolve_params(dict(params))  # unknown parameters fail here, before any work
    items = [(k, str(r.get("id", k)), r["prompt"], r.get("target")) for k, r in enumerate(data)]
    config = {"model": model.name, "method": method, "params": params, "n_rows": len(items),
              "rows": hashlib.sha256(json.dumps([it[2:] for it in items]).encode()).hexdigest()[:16]}
    path = Path(out) if out is not None else None
    kind = _out_kind(path) if path is not None else None
    if path is not None:
        check_output(path)
    stream_path = path if kind != "parquet" else Path(f"{path}.partial.jsonl")
    stream = _Stream(stream_path, {"kind": "header", "format": ROWS_FORMAT, "config": config},
                     resume) if stream_path is not None else None
    done = dict(stream.done) if stream is not None else {}
    todo = [it for it in items if it[0] not in done]
    units = [(c, method, params) for c in _chunks(todo, batch_size)]
    results = dict(done)
    with tqdm(total=len(items), initial=len(done), disable=not progress, desc="attribute", unit="row") as bar:
        for recs in run_units(executor, model, _attribute_unit, units):
            if stream is not None:
                stream.add(recs)
            results.update({r["index"]: json.loads(dumps(r)) for r in recs})
            bar.update(len(recs))
    ordered = [results[k] for k in range(len(items))]
    if kind == "parquet" and path is not None:
        _write_parquet(path, ordered, config)
        stream_path.unlink(missing_ok=True)  # type: ignore[union-attr]
    info = {"config": config, "resumed_rows": len(done), **(executor.info if executor is not None else {})}
    return AttributionRows([Attribution.from_dict(r["attribution"]) for r in ordered], path, info)


def _write_parquet(path: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    attrs = [r["attribution"] for r in records]
    table = pa.table({
        "index": pa.array([r["index"] for r in records], pa.int64()),
        "id": [r["id"] for r in records],
        "prompt": [r["prompt"] for r in records],
        "target": [r["target"] for r in records],
        "method": [a["method"] for a in attrs],
        "source_tokens": [a["source_tokens"] for a in attrs],
        "target_tokens": [a["target_tokens"] for a in attrs],
        "scores": pa.array([a["scores"] for a in attrs], pa.list_(pa.list_(pa.float32()))),
        "attribution": [json.dumps(a) for a in attrs],
    }).replace_schema_metadata({"lmxray": dumps({"format": ROWS_FORMAT, "config": config})})
    atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))


def read_attributions(path: str | os.PathLike[str]) -> list[Attribution]:
    """The attributions of a job's output (``.jsonl`` or ``.parquet``), in row order."""
    p = Path(path)
    if _out_kind(p) == "parquet":
        import pyarrow.parquet as pq

        if not p.is_file():
            raise InputError(f"{p} does not exist; give the output of attribute-dataset")
        col = pq.read_table(p, columns=["attribution"]).column("attribution").to_pylist()
        return [Attribution.from_dict(json.loads(s)) for s in col]
    recs = read_jsonl(p, what="attribution rows")
    if recs[0].get("format") != ROWS_FORMAT:
        raise InputError(f"{p} is not an attribution-rows file (format {ROWS_FORMAT})")
    return [Attribution.from_dict(r["attribution"]) for r in recs[1:]]
