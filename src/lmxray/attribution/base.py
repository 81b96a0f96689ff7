"""The method registry and the contract every attribution method follows.

A method is one function registered by name::

    @register_method("saliency", description="...", kind="gradient")
    def saliency(model, requests, ctx, *, reduce: str = "sum") -> list[MethodOutput]

The method's parameters are its keyword-only parameters, declared once in its signature with
their defaults (:attr:`MethodSpec.params` reads them with :func:`inspect.signature`; the CLI and
``lmxray methods --verbose`` read them from there).

It receives the wrapped :class:`~lmxray.model.Model`, a list of :class:`Request` (token ids of
each prompt, target and optional foil), and a :class:`Context` (target function, chunking), and
returns one :class:`MethodOutput` per request: a ``[T, S]`` score matrix (NaN where undefined),
optionally the target-function values, and method-specific provenance for ``info``. Everything
else — tokenisation, generation, validation, provenance, result objects — is shared in
:mod:`lmxray.attribution.api`, so a new method is a few dozen lines.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..memory import check_batch_size
from ..targets import TargetFn

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = [
    "Request",
    "Context",
    "MethodOutput",
    "MethodSpec",
    "register_method",
    "get_method",
    "methods",
    "method_specs",
    "method_params",
    "nan_mask_scores",
    "eval_mode",
]


@dataclass
class Request:
    """One prompt to explain: ids of the prompt (with special tokens), target and foil."""

    prompt_ids: list[int]
    target_ids: list[int]
    foil_ids: list[int] | None = None

    @property
    def source_ids(self) -> list[int]:
        return self.prompt_ids + self.target_ids

    @property
    def input_ids(self) -> list[int]:
        """What the model reads to score every target step (the last target is not read)."""
        return self.source_ids[:-1]

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_target(self) -> int:
        return len(self.target_ids)

    @property
    def n_source(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class Context:
    """What every method shares: the target function and chunking limits."""

    target_fn: TargetFn
    internal_batch_size: int | None = None
    memory_budget: int | None = None  # bytes; None = automatic (free device memory)
    # what the engine records for every result of the call (e.g. ``oom_backoff``)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_batch_size(self.internal_batch_size)
        b = self.memory_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise InputError(
                f"memory_budget must be a positive number of bytes or None (automatic), got {b!r}"
            )


@dataclass
class MethodOutput:
    scores: np.ndarray  # [T, S] float32, NaN where s >= n_prompt + t
    target_scores: np.ndarray | None = None  # [T]
    info: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., list[MethodOutput]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    kind: str  # gradient | perturbation | attention | control
    fn: MethodFn
    passes: str = ""  # forward/backward passes, documented

    @property
    def params(self) -> dict[str, Any]:
        """Accepted keyword parameters and their defaults, from the method's signature."""
        return method_params(self.fn)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            accepted = ", ".join(sorted(self.params)) or "none"
            raise InputError(
                f"method {self.name!r} does not take {', '.join(unknown)}; it accepts: {accepted}"
            )
        out = dict(self.params)
        out.update(given)
        return out


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    description: str,
    kind: str,
    passes: str = "",
) -> Callable[[MethodFn], MethodFn]:
    """Register an attribution method under ``name`` (raises if the name is taken).

    The method's parameters are its keyword-only parameters; each needs a default."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"an attribution method named {name!r} is already registered")
        method_params(fn)  # checks the signature now, not at the first call
        _REGISTRY[name] = MethodSpec(
            name=name, description=description, kind=kind, fn=fn, passes=passes
        )
        return fn

    return deco


def method_params(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of a method function and their defaults."""
    out: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            raise ValueError(
                f"method parameter {p.name!r} of {fn.__name__} has no default; "
                "give every keyword-only parameter a default"
            )
        out[p.name] = p.default
    return out


# The built-in methods register themselves when ``lmxray.attribution`` is imported (its
# ``__init__`` imports their modules), which happens before this module can be used.


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def methods() -> dict[str, str]:
    """Registered method names with their one-line descriptions."""
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def method_specs() -> dict[str, MethodSpec]:
    """Registered methods by name (description, kind, parameters with defaults, passes)."""
    return dict(sorted(_REGISTRY.items()))


def nan_mask_scores(scores: np.ndarray, n_prompt: int) -> np.ndarray:
    """Set ``scores[t, s] = NaN`` where ``s >= n_prompt + t`` (not attributable)."""
    n_t, n_s = scores.shape
    t = np.arange(n_t)[:, None]
    s = np.arange(n_s)[None, :]
    out = scores.astype(np.float32, copy=True)
    out[s >= n_prompt + t] = np.nan
    return out


@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """Run in eval mode (no dropout) and restore the user's train/eval flag afterwards."""
    was_training = model.hf.training
    if was_training:
        model.hf.eval()
    try:
        yield
    finally:
        if was_training:
            model.hf.train()
