"""The method registry and the contract every attribution method follows.

A method is one function registered by name::

    @register_method("saliency", description="...", kind="gradient", params={"reduce": "sum"})
    def saliency(model, requests, ctx, *, reduce): -> list[MethodOutput]

It receives the wrapped :class:`~lmxray.model.Model`, a list of :class:`Request` (token ids of
each prompt, target and optional foil), and a :class:`Context` (target function, chunking), and
returns one :class:`MethodOutput` per request: a ``[T, S]`` score matrix (NaN where undefined),
optionally the target-function values, and method-specific provenance for ``info``. Everything
else — tokenisation, generation, validation, provenance, result objects — is shared in
:mod:`lmxray.attribution.api`, so a new method is a few dozen lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..targets import TargetFn

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "Request",
    "Context",
    "MethodOutput",
    "MethodSpec",
    "register_method",
    "get_method",
    "methods",
    "nan_mask_scores",
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
    params: dict[str, Any]  # accepted keyword parameters and their defaults
    passes: str = ""  # forward/backward passes, documented

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
    params: dict[str, Any] | None = None,
    passes: str = "",
) -> Callable[[MethodFn], MethodFn]:
    """Register an attribution method under ``name`` (raises if the name is taken)."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"an attribution method named {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(
            name=name, description=description, kind=kind, fn=fn, params=dict(params or {}),
            passes=passes,
        )
        return fn

    return deco


def _ensure_builtin() -> None:
    from . import attention, gradient, perturbation  # noqa: F401  (registers the built-ins)


def get_method(name: str) -> MethodSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def methods() -> dict[str, str]:
    """Registered method names with their one-line descriptions."""
    _ensure_builtin()
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def method_specs() -> dict[str, MethodSpec]:
    _ensure_builtin()
    return dict(sorted(_REGISTRY.items()))


def nan_mask_scores(scores: np.ndarray, n_prompt: int) -> np.ndarray:
    """Set ``scores[t, s] = NaN`` where ``s >= n_prompt + t`` (not attributable)."""
    n_t, n_s = scores.shape
    t = np.arange(n_t)[:, None]
    s = np.arange(n_s)[None, :]
    out = scores.astype(np.float32, copy=True)
    out[s >= n_prompt + t] = np.nan
    return out
