"""The result type of every attribution method.

``Attribution`` holds the tokens, the score matrix and its provenance. Axis meaning (contract):

- ``source_tokens``: the prompt tokens, then the target tokens (each target token can be a source
  for later target steps);
- ``scores[t, s]``: contribution of source token ``s`` to target step ``t``; NaN where ``s`` is at
  or after step ``t``'s position (``s >= prompt_length + t``);
- ``target_scores[t]``: the value of the target function at step ``t``.

Results are saved as versioned JSON (``lmxray.attribution/1``); loading never executes code.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Attribution", "FORMAT", "atomic_write_text", "atomic_write_bytes"]

FORMAT = "lmxray.attribution/1"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        from .errors import InputError

        raise InputError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _nan_to_none(rows: np.ndarray) -> list[Any]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in rows.tolist()]


def _none_to_nan(rows: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float32)


@dataclass
class Attribution:
    """Token attribution for one prompt and its target tokens.

    Attributes:
        source_tokens: ``S`` strings: prompt tokens then target tokens.
        target_tokens: ``T`` strings, the explained continuation.
        scores: float32 array ``[T, S]``; NaN where ``s >= prompt_length + t``.
        target_scores: float32 array ``[T]``: the target function at each step.
        method: registered name of the method.
        model_name: name or path of the model.
        info: provenance: method parameters, target function, baseline, versions, diagnostics.
        source_ids / target_ids: token ids (optional, for re-scoring).

    Example:
        >>> a = m.attribute("The capital of France is", target=" Paris")  # doctest: +SKIP
        >>> a.scores.shape == (len(a.target_tokens), len(a.source_tokens))  # doctest: +SKIP
        True
    """

    source_tokens: list[str]
    target_tokens: list[str]
    scores: np.ndarray
    target_scores: np.ndarray
    method: str
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    source_ids: list[int] | None = None
    target_ids: list[int] | None = None

    def __post_init__(self) -> None:
        self.source_tokens = [str(t) for t in self.source_tokens]
        self.target_tokens = [str(t) for t in self.target_tokens]
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.target_scores = np.asarray(self.target_scores, dtype=np.float32).reshape(-1)
        n_t, n_s = len(self.target_tokens), len(self.source_tokens)
        if n_t == 0:
            raise FormatError("an Attribution needs at least one target token")
        if n_s < n_t:
            raise FormatError(f"{n_s} source tokens cannot hold {n_t} target tokens")
        if self.source_tokens[n_s - n_t :] != self.target_tokens:
            raise FormatError("source_tokens must end with the target tokens")
        if self.scores.shape != (n_t, n_s):
            raise FormatError(f"scores has shape {self.scores.shape}, expected ({n_t}, {n_s})")
        if self.target_scores.shape != (n_t,):
            raise FormatError(
                f"target_scores has shape {self.target_scores.shape}, expected ({n_t},)"
            )
        for name, ids, n in (("source_ids", self.source_ids, n_s), ("target_ids", self.target_ids, n_t)):
            if ids is not None and len(ids) != n:
                raise FormatError(f"{name} has {len(ids)} entries, expected {n}")

    # ------------------------------------------------------------------ views
    @property
    def prompt_length(self) -> int:
        """Number of prompt tokens (the first ``prompt_length`` source tokens)."""
        return len(self.source_tokens) - len(self.target_tokens)

    @property
    def prompt_tokens(self) -> list[str]:
        return self.source_tokens[: self.prompt_length]

    def valid_mask(self) -> np.ndarray:
        """Boolean ``[T, S]``: True where ``scores[t, s]`` is defined (``s < prompt_length + t``)."""
        t = np.arange(len(self.target_tokens))[:, None]
        s = np.arange(len(self.source_tokens))[None, :]
        return s < self.prompt_length + t

    def aggregate(self, how: str = "sum") -> np.ndarray:
        """One score per *prompt* token over all target steps (``sum`` | ``mean`` | ``abs_sum``)."""
        sub = self.scores[:, : self.prompt_length]
        if how == "sum":
            return np.nansum(sub, axis=0)
        if how == "mean":
            return np.nanmean(sub, axis=0)
        if how == "abs_sum":
            return np.nansum(np.abs(sub), axis=0)
        raise ValueError(f"unknown aggregation {how!r}; use sum, mean or abs_sum")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model_name,
            "method": self.method,
            "source_tokens": list(self.source_tokens),
            "target_tokens": list(self.target_tokens),
            "scores": _nan_to_none(self.scores),
            "target_scores": [None if math.isnan(v) else float(v) for v in self.target_scores.tolist()],
            "info": _jsonable(self.info),
            "source_ids": self.source_ids,
            "target_ids": self.target_ids,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attribution:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise FormatError(f"not an lmxray attribution (format {got!r}, expected {FORMAT!r})")
        try:
            return cls(
                source_tokens=data["source_tokens"],
                target_tokens=data["target_tokens"],
                scores=_none_to_nan(data["scores"]).reshape(
                    len(data["target_tokens"]), len(data["source_tokens"])
                ),
                target_scores=np.array(
                    [np.nan if v is None else v for v in data["target_scores"]], dtype=np.float32
                ),
                method=data["method"],
                model_name=data.get("model", ""),
                info=data.get("info") or {},
                source_ids=data.get("source_ids"),
                target_ids=data.get("target_ids"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed lmxray attribution: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write versioned JSON (NaN as ``null``), atomically."""
        return atomic_write_text(path, self.to_json(indent=None) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Attribution:
        """Read a result written by :meth:`save` (plain JSON; no code is executed)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise FormatError(f"no such file: {path}") from None
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one row per (target step, source token), NaN cells included."""
        import pandas as pd

        t_idx, s_idx = np.meshgrid(
            np.arange(len(self.target_tokens)), np.arange(len(self.source_tokens)), indexing="ij"
        )
        return pd.DataFrame(
            {
                "target_index": t_idx.ravel(),
                "target_token": np.array(self.target_tokens, dtype=object)[t_idx.ravel()],
                "source_index": s_idx.ravel(),
                "source_token": np.array(self.source_tokens, dtype=object)[s_idx.ravel()],
                "is_prompt": s_idx.ravel() < self.prompt_length,
                "score": self.scores.ravel(),
                "target_score": self.target_scores[t_idx.ravel()],
            }
        )

    # ------------------------------------------------------------------ rendering
    def show(self, **kwargs: Any) -> None:
        """Print a coloured terminal view (tokens by score, per target step)."""
        from .render.console import show_attribution

        show_attribution(self, **kwargs)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from .render.console import attribution_renderables

        yield from attribution_renderables(self)

    def to_html(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> str:
        """Self-contained HTML report; written atomically to ``path`` when given."""
        from .render.html import attribution_html

        html = attribution_html(self, **kwargs)
        if path is not None:
            atomic_write_text(path, html)
        return html

    def _repr_html_(self) -> str:
        from .render.html import attribution_html

        return attribution_html(self, standalone=False)

    def __repr__(self) -> str:
        return (
            f"Attribution(method={self.method!r}, model={self.model_name!r}, "
            f"sources={len(self.source_tokens)}, targets={self.target_tokens!r})"
        )


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and other simple objects to plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return repr(obj)
