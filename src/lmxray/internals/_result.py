"""Shared serialisation of the internals result types: versioned JSON, atomic writes, no pickle."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import FormatError, InputError
from ..io import atomic_write_text

__all__ = ["JsonResult", "to_jsonable", "from_jsonable"]


def to_jsonable(x: Any) -> Any:
    """numpy arrays → nested lists (NaN/inf → None); recursive on dicts and lists."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "fc":
            return [to_jsonable(v) for v in x] if x.ndim > 1 else [None if not math.isfinite(float(v)) else float(v) for v in x]
        return x.tolist()
    if isinstance(x, np.floating | float):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    return x


def from_jsonable(rows: Any) -> np.ndarray:
    """Nested lists with None → float32 array with NaN."""
    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(u) for u in v]
        return np.nan if v is None else v
    return np.asarray(conv(rows), dtype=np.float32)


class JsonResult:
    """Mixin: ``to_dict``/``from_dict`` are per class; this adds JSON text, save and load."""

    FORMAT: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - each class defines it
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def to_json(self, indent: int | None = None) -> str:
        """The result as JSON text (``format`` field first)."""
        return json.dumps(to_jsonable(self.to_dict()), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Any:
        """Read a file written by :meth:`save` (checks the format version)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no result file at {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise FormatError(f"{path} has format {got!r}; expected {cls.FORMAT!r}")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path} is malformed: {exc}") from None
