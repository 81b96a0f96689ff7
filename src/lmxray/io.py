"""Every file lmxray reads or writes goes through this module.

One home for: atomic writes with one permission rule, output checks made before any work,
JSON-safe conversion, JSON / JSONL reading with clear one-line errors (line numbers, encoding),
and safetensors + JSON metadata with a format and version check. Nothing here unpickles:
results are JSON or safetensors, and loading never executes code.

Permission rule: a written file gets ``0o666 & ~umask`` (what ``open(path, "w")`` would give),
whatever writes it (JSON, HTML, PNG, safetensors, checkpoints); ``mkstemp``'s private 0600 never
leaks out.

Example:
    >>> from lmxray import io
    >>> p = io.atomic_write_text("/tmp/lmxray-io-example.json", io.dumps({"x": float("nan")}))
    >>> io.read_json(p)
    {'x': None}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError, InputError

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_with",
    "atomic_folder",
    "append_synced",
    "cut_torn_tail",
    "differing_keys",
    "file_mode",
    "check_output",
    "check_outputs",
    "to_jsonable",
    "from_jsonable",
    "dumps",
    "read_text",
    "read_json",
    "read_jsonl",
    "parse_jsonl",
    "iter_jsonl",
    "check_format",
    "save_tensors",
    "load_tensors",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- writing
def file_mode() -> int:
    """The mode every written file gets: ``0o666`` less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_output(path: PathLike) -> Path:
    """The path of an output file, checked before any work: its folder exists and is writable,
    and it is not itself a folder. Raises :class:`InputError` with what to do."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {path}: folder {parent} is not writable")
    return path


def check_outputs(*paths: PathLike | None) -> None:
    """:func:`check_output` for each path (``None`` and ``'-'``, stdout, are skipped), and no two
    outputs may name the same file."""
    seen: set[Path] = set()
    for path in paths:
        if path is None or str(path) == "-":
            continue
        key = check_output(path).resolve()
        if key in seen:
            raise InputError(f"two outputs go to the same file {path}; give different names")
        seen.add(key)


def atomic_write_with(path: PathLike, write: Callable[[str], Any], *, suffix: str = ".tmp") -> Path:
    """Write a file atomically through ``write(tmp_path)``: a temporary file in the same folder,
    given :func:`file_mode`, then renamed over ``path``. A reader sees the old file or the new
    one, never half; on any error (Ctrl-C included) nothing is left behind."""
    path = check_output(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(out: PathLike) -> Iterator[Path]:
    """Fill a folder's files atomically: yield a temporary folder beside ``out``; when the block
    ends without error each file is moved into ``out`` (created if missing) with
    :func:`file_mode`; on error the temporary folder is removed and ``out`` is untouched.

    Example:
        >>> with atomic_folder("/tmp/lmxray-model") as tmp:  # doctest: +SKIP
        ...     hf_model.save_pretrained(tmp)
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write the folder {out}: a file of that name exists")
    if not out.is_dir():
        check_output(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        mode = file_mode()
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                dest = out / f.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(f, mode)
                os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- JSON-safe values
def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy / torch values, recursively: arrays become nested lists,
    NaN and infinities become ``None``, tuples become lists, paths become strings; anything
    else unknown becomes its ``repr`` (a dtype, a device), so ``json.dumps`` never fails."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        return to_jsonable(obj.detach().cpu().numpy())
    return repr(obj)


def from_jsonable(rows: Any, dtype: Any = np.float32) -> np.ndarray:
    """Nested lists with ``None`` (as written by :func:`to_jsonable`) back to an array with NaN."""

    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(u) for u in v]
        return np.nan if v is None else v

    return np.asarray(conv(rows), dtype=dtype)


def dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`to_jsonable` (strict: no NaN literals in the text)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)


# --------------------------------------------------------------------------- reading
def _input_file(path: PathLike, what: str, hint: str = "") -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the {what} file{hint}")
    if not path.is_file():
        raise InputError(f"no {what} file at {path}{hint}")
    return path


def read_text(path: PathLike, *, what: str = "text", hint: str = "") -> str:
    """A UTF-8 text file; a file in another encoding is a one-line error naming the line."""
    path = _input_file(path, what, hint)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path} line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "convert the file to UTF-8 first"
        ) from None


def check_format(data: Any, accepted: str | Sequence[str], where: PathLike | str = "input") -> dict:
    """``data`` as a dict whose ``format`` field is one of ``accepted`` (e.g.
    ``("lmxray.attribution/2", "lmxray.attribution/1")``); a newer version of a known format
    says to upgrade lmxray, anything else names what it is."""
    accepted = (accepted,) if isinstance(accepted, str) else tuple(accepted)
    got = data.get("format") if isinstance(data, dict) else None
    if got in accepted:
        return data  # type: ignore[return-value]
    names = {a.rsplit("/", 1)[0] for a in accepted}
    if isinstance(got, str) and got.rsplit("/", 1)[0] in names:
        raise FormatError(
            f"{where} has format {got!r}, which this lmxray does not read (it reads "
            f"{', '.join(accepted)}); upgrade lmxray or re-create the file"
        )
    what = repr(got) if got is not None else (
        "no 'format' field" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    )
    kind = accepted[0].rsplit("/", 1)[0]
    kind = kind if kind.startswith("lmxray.") else f"lmxray {kind}"
    raise FormatError(f"{where} is not an {kind} file (found {what}; expected {accepted[0]!r})")


def read_json(path: PathLike, *, formats: str | Sequence[str] | None = None,
              what: str = "JSON") -> Any:
    """A JSON file (UTF-8); with ``formats``, its ``format`` field is checked too."""
    path = Path(path)
    text = read_text(path, what=what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return data if formats is None else check_format(data, formats, path)


def iter_jsonl(path: PathLike, *, what: str = "JSONL",
               hint: str = "; give a JSONL file with one JSON object per line",
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not
    UTF-8, not JSON or not an object is a one-line error naming the file and line."""
    path = _input_file(path, what, hint)
    with open(path, "rb") as fh:
        yield from _jsonl_rows(fh, path)


def _jsonl_rows(lines: Iterable[bytes], source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{source} line {n} is not UTF-8 text; convert the file to UTF-8 first"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} line {n} is not JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise InputError(f"{source} line {n} is not a JSON object")
        yield n, row


def read_jsonl(path: PathLike, *, what: str = "JSONL", allow_empty: bool = False,
               hint: str = "; give a JSONL file with one JSON object per line",
               ) -> list[dict[str, Any]]:
    """Every object of a JSONL file (see :func:`iter_jsonl`); an empty file is an error unless
    ``allow_empty``."""
    return _some_rows([row for _, row in iter_jsonl(path, what=what, hint=hint)], path, what,
                      hint, allow_empty)


def parse_jsonl(text: str, *, source: str, what: str = "JSONL", allow_empty: bool = False,
                hint: str = "; give a JSONL file with one JSON object per line",
                ) -> list[dict[str, Any]]:
    """:func:`read_jsonl` of text already in memory (an upload), errors naming ``source``."""
    rows = [row for _, row in _jsonl_rows(text.encode("utf-8").splitlines(keepends=True), source)]
    return _some_rows(rows, source, what, hint, allow_empty)


def _some_rows(rows: list[dict[str, Any]], source: Any, what: str, hint: str,
               allow_empty: bool) -> list[dict[str, Any]]:
    if not rows and not allow_empty:
        raise InputError(f"{source} holds no {what} rows{hint}")
    return rows


# --------------------------------------------------------------------------- tensors
def save_tensors(path: PathLike, tensors: Mapping[str, Any], *, format: str,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors as ``.safetensors``, atomically, with the ``format`` and every metadata
    value as JSON text in the file's header (safetensors metadata is string to string)."""
    from safetensors.torch import save_file

    meta = {"format": format}
    meta.update({str(k): json.dumps(to_jsonable(v)) for k, v in (metadata or {}).items()})
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_with(path, lambda tmp: save_file(flat, tmp, metadata=meta),
                             suffix=".tmp.safetensors")


def load_tensors(path: PathLike, *, formats: str | Sequence[str], what: str = "tensor",
                 device: str = "cpu", hint: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, metadata)`` of a file written by :func:`save_tensors`, its format checked;
    metadata values are parsed back from JSON (a plain string where a value is not JSON, as in
    files written before this module)."""
    from safetensors import safe_open

    path = _input_file(path, what, hint)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            raw = dict(fh.metadata() or {})
            check_format(raw, formats, path)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except FormatError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise FormatError(f"cannot read {path} as safetensors: {exc}") from None
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = v if k == "format" else json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return tensors, meta


# --------------------------------------------------------------------------- resumable rows files
def append_synced(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` to a rows file and flush it to disk, so that a crash keeps every row
    written before it (the first rows of a run go out with their header by an atomic write)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def cut_torn_tail(path: str | os.PathLike[str], good_bytes: int) -> None:
    """Cut a rows file back to its first ``good_bytes`` (the complete lines a resumed run keeps)."""
    if good_bytes < Path(path).stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The keys whose values differ between two run configurations, for a resume error."""
    return ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
