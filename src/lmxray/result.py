"""The result type of every attribution method.

``Attribution`` holds the tokens, the score matrix and its provenance. Axis meaning (contract):

- ``source_tokens``: the prompt tokens, then the target tokens (each target token can be a source
  for later target steps);
- ``scores[t, s]``: contribution of source token ``s`` to target step ``t``; NaN where ``s`` is at
  or after step ``t``'s position (``s >= prompt_length + t``);
- ``target_scores[t]``: the value of the target function at step ``t``.

Results are saved as versioned JSON (``lmxray.attribution/2``; version 1 files, which carry
no verification, still load); loading never executes code. An attribution may carry a
:class:`Verification` (``Attribution.verify(model)``, ``m.attribute(..., verify=True)``): its
measured faithfulness against a null, stability, completeness or convergence, and a verdict.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import FormatError, MethodError
from .io import atomic_write_bytes, atomic_write_text, check_format, dumps, read_json, to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Result", "Attribution", "Verification", "FORMAT", "READS", "register_renderer", "renderer_for"]

FORMAT = "lmxray.attribution/2"
READS = ("lmxray.attribution/1",)  # version 1: the same fields, no "verification"
_VERIFY_MODULE = "lmxray.attribution.verify"

# --------------------------------------------------------------------------- views
# Views live in ``lmxray.render``; a result finds its view here, by kind and class, so that no
# result module imports a renderer and ``render`` may import result types freely.
# Kinds: "console" (-> iterable of rich renderables), "html" (-> str), "png" (-> bytes).
_RENDERERS: dict[tuple[str, type], Callable[..., Any]] = {}
_RENDER_PACKAGE = "lmxray.render"


def register_renderer(result_type: type, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function is the ``kind`` view (``console``/``html``/``png``) of
    ``result_type`` and of its subclasses.

    Example:
        >>> @register_renderer(MyResult, "html")  # doctest: +SKIP
        ... def my_result_html(result, standalone=True): ...
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _RENDERERS[(kind, result_type)] = fn
        return fn

    return deco


def renderer_for(result_type: type, kind: str) -> Callable[..., Any] | None:
    """The registered ``kind`` view of ``result_type`` (or of its nearest base class).

    The render package is imported on first use: this is the one lazy import of views (they
    bring matplotlib and jinja2, which computing a result never needs)."""
    for _ in range(2):
        for klass in result_type.__mro__:
            fn = _RENDERERS.get((kind, klass))
            if fn is not None:
                return fn
        importlib.import_module(_RENDER_PACKAGE)
    return None


class Result:
    """Base of every lmxray result: versioned JSON, atomic ``save``, ``load`` that never
    executes code, and views (``show`` / ``to_html`` / ``to_png``) found in ``lmxray.render``.

    A subclass sets ``FORMAT`` (``"lmxray.<name>/<version>"``), may list older formats it still
    reads in ``READS``, and defines ``to_dict`` (its fields; ``format`` is added) and
    ``from_dict``. Results stored as safetensors override ``save``/``load`` with
    :func:`lmxray.io.save_tensors` / :func:`lmxray.io.load_tensors`.
    """

    FORMAT: ClassVar[str] = ""
    READS: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - each class defines it
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def formats(cls) -> tuple[str, ...]:
        """The formats :meth:`load` accepts: ``FORMAT`` first, then ``READS``."""
        return (cls.FORMAT, *cls.READS)

    def to_json(self, indent: int | None = None) -> str:
        """The result as JSON text (NaN as ``null``)."""
        d = self.to_dict()
        if "format" not in d:
            d = {"format": self.FORMAT, **d}
        return dumps(d, indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write versioned JSON, atomically."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Any:
        """Read a file written by :meth:`save` (plain JSON; no code is executed)."""
        data = read_json(path, formats=cls.formats(), what=f"{cls.__name__} result")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FormatError(f"{path} is a malformed {cls.FORMAT} file: {exc!r}") from None

    # ------------------------------------------------------------------ views
    def _view(self, kind: str) -> Callable[..., Any]:
        fn = renderer_for(type(self), kind)
        if fn is None:
            raise MethodError(f"{type(self).__name__} has no {kind} view")
        return fn

    def renderables(self, **kwargs: Any) -> Iterable[Any]:
        """The terminal view as rich renderables."""
        return self._view("console")(self, **kwargs)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        if renderer_for(type(self), "console") is None:
            yield repr(self)
            return
        yield from self.renderables()

    def show(self, console: Any = None, **kwargs: Any) -> None:
        """Print the terminal view (``console``: a rich ``Console``; default stdout)."""
        from rich.console import Console

        out = console if console is not None else Console()
        for r in self.renderables(**kwargs):
            out.print(r)

    def to_html(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> str:
        """Self-contained HTML report (escaped); written atomically to ``path`` when given."""
        html = self._view("html")(self, **kwargs)
        if path is not None:
            atomic_write_text(path, html)
        return html

    def _repr_html_(self) -> str | None:
        """The HTML view in a notebook (``None``, so the plain repr, when there is none)."""
        fn = renderer_for(type(self), "html")
        return None if fn is None else fn(self, standalone=False)

    def to_png(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> bytes:
        """PNG figure as bytes; written atomically to ``path`` when given."""
        data = self._view("png")(self, **kwargs)
        if path is not None:
            atomic_write_bytes(path, data)
        return data


def _nan_to_none(rows: np.ndarray) -> list[Any]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in rows.tolist()]


def _none_to_nan(rows: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float32)


@dataclass
class Verification:
    """How far an attribution deserves trust: measured checks and a verdict with its reasons.

    Made by :func:`lmxray.attribution.verify.verify`; stored in the attribution's JSON.

    Attributes:
        verdict: short label, e.g. ``"faithful, stable"`` or ``"not distinguishable from random"``.
        passed: every check that ran passed.
        checks: ``{name: True | False | None}`` for ``faithful``, ``stable``, ``complete``
            (integrated gradients), ``converged`` (sampling methods), ``sane`` (randomised
            model); None: not run or not applicable.
        reasons: one sentence per check, e.g. ``"faithful: beats random, p = 0.002"``.
        faithfulness, stability, completeness, convergence, sanity: the numbers of each check
            (plain JSON-able dicts; per target step lists where it applies).
        cost: the extra work of the checks (forward passes, token positions, method reruns).
        params: the parameters of the verification (k, alpha, seed...).
    """

    verdict: str
    passed: bool
    checks: dict[str, bool | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    faithfulness: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] = field(default_factory=dict)
    completeness: dict[str, Any] | None = None
    convergence: dict[str, Any] | None = None
    sanity: dict[str, Any] | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "verdict", "passed", "checks", "reasons", "faithfulness", "stability", "completeness",
        "convergence", "sanity", "cost", "params",
    )

    @property
    def faithful(self) -> bool | None:
        return self.checks.get("faithful")

    @property
    def stable(self) -> bool | None:
        return self.checks.get("stable")

    @property
    def p_value(self) -> float | None:
        """The faithfulness p-value over all target steps (None when not measured)."""
        v = self.faithfulness.get("p_value")
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({name: getattr(self, name) for name in self._FIELDS})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        if not isinstance(data, dict) or "verdict" not in data:
            raise ValueError("verification needs a 'verdict'")
        kw = {name: data[name] for name in cls._FIELDS if data.get(name) is not None}
        kw["verdict"], kw["passed"] = str(data["verdict"]), bool(data.get("passed"))
        return cls(**kw)


@dataclass(repr=False)
class Attribution(Result):
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
        verification: the :class:`Verification` of this explanation, or None (see :meth:`verify`).

    Example:
        >>> a = m.attribute("The capital of France is", target=" Paris")  # doctest: +SKIP
        >>> a.scores.shape == (len(a.target_tokens), len(a.source_tokens))  # doctest: +SKIP
        True
    """

    FORMAT: ClassVar[str] = FORMAT
    READS: ClassVar[tuple[str, ...]] = READS

    source_tokens: list[str]
    target_tokens: list[str]
    scores: np.ndarray
    target_scores: np.ndarray
    method: str
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    source_ids: list[int] | None = None
    target_ids: list[int] | None = None
    verification: Verification | None = None

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
            "info": to_jsonable(self.info),
            "source_ids": self.source_ids,
            "target_ids": self.target_ids,
            "verification": None if self.verification is None else self.verification.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attribution:
        check_format(data, cls.formats(), "input")
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
                verification=(None if data.get("verification") is None
                              else Verification.from_dict(data["verification"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed lmxray attribution: {exc}") from None

    def verify(self, model: Any, **kwargs: Any) -> Verification:
        """Check this explanation on ``model`` (the one that produced it) and store the
        :class:`Verification` in :attr:`verification`; see :func:`lmxray.attribution.verify.verify`
        for the checks and ``kwargs`` (``k``, ``alpha``, ``stability``, ``model_null``...).

        ``lmxray.attribution`` is a layer above this module, so it is looked up on first use
        (as :func:`renderer_for` looks up views).
        """
        fn = importlib.import_module(_VERIFY_MODULE).verify
        self.verification = fn(model, self, **kwargs)
        return self.verification

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

    def __repr__(self) -> str:
        return (
            f"Attribution(method={self.method!r}, model={self.model_name!r}, "
            f"sources={len(self.source_tokens)}, targets={self.target_tokens!r})"
        )

