"""Executors: where the units of a dataset job run.

A dataset job (the evaluate runner, attribution over a dataset, facts-wide causal tracing) cuts
its rows into *units* (a chunk of examples, one fact) and asks an executor to apply a pure
function ``fn(model, unit)`` to each. ``executor.map(fn, units)`` yields the results **in the
order of the units**, as they are ready, so the job appends them to its output file in order
and a rerun resumes where the file stops. The feature packages only call ``map`` (they never
import this package): :class:`InProcess` runs everything here on one model (the default),
:class:`lmxray.jobs.cluster.RayExecutor` on Ray actors that each load the model once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InputError
from ..model import Model, load

__all__ = ["Executor", "InProcess", "ModelSpec", "run_units"]


class Executor(Protocol):
    """What a dataset job needs from an executor."""

    info: dict[str, Any]

    def map(self, fn: Callable[[Model, Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        """``fn(model, unit)`` for each unit, yielded in the units' order."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Release the workers (a no-op in process)."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its own copy of the model: the arguments of :func:`lmxray.load`."""

    name_or_path: str | None = None
    device: str | None = None
    dtype: str | None = None
    device_map: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Model:
        return load(self.name_or_path, device=self.device, dtype=self.dtype, device_map=self.device_map,
                    **self.kwargs)

    def on_device(self, device: str | None) -> ModelSpec:
        """The same model on ``device`` (a worker's own GPU), unless a device_map places it."""
        if self.device_map is not None or device is None:
            return self
        return ModelSpec(self.name_or_path, device, self.dtype, None, dict(self.kwargs))


class InProcess:
    """Every unit here, in order, on one already loaded model (the default executor)."""

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise InputError(f"InProcess needs an lmxray Model, got {type(model).__name__}")
        self.model = model
        self.info: dict[str, Any] = {"executor": "in-process", "workers": 1}

    def map(self, fn: Callable[[Model, Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        for unit in units:
            yield fn(self.model, unit)

    def close(self) -> None:
        return None

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_units(executor: Executor | None, model: Model, fn: Callable[[Model, Any], Any],
              units: Iterable[Any]) -> Iterator[Any]:
    """``executor.map(fn, units)``, or in process on ``model`` when there is no executor."""
    return (executor or InProcess(model)).map(fn, units)
