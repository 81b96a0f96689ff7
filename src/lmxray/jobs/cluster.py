"""Dataset jobs on Ray: one model per actor, units sharded over the actors, results in order.

``RayExecutor(spec, workers=N)`` starts a local Ray cluster (N CPU actors, or one actor per GPU
when the machine has GPUs and ``workers`` is not given), or joins a running one with
``address="host:port"`` (``"auto"``: the cluster this machine belongs to). Each actor loads the
model once (from a :class:`~lmxray.jobs.executor.ModelSpec`, or a copy of an in-memory model
shipped once through the object store). :meth:`RayExecutor.map` keeps every actor busy with up
to ``window`` units in flight and yields the results in the order of the units.

Failures: an actor whose process dies (killed, out of host memory) is restarted by Ray, which
loads the model again, and its unfinished units are retried there (``max_restarts`` /
``max_task_retries``); the job sees each result exactly once. An exception raised by the job's
function is not retried: it is raised again here as itself (an :class:`InputError` stays one).

Ray is optional (``pip install 'lmxray[ray]'``) and imported only when an executor is made.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ..errors import InputError, LmxrayError
from ..model import Model
from .executor import ModelSpec

__all__ = ["RayExecutor", "ray_module", "check_address", "executor_for", "RETRIES"]

#: restarts of a dead actor, and retries of its unfinished units, before the job fails
RETRIES = 4


def ray_module() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise InputError("Ray is not installed; install it with: pip install 'lmxray[ray]' "
                         "(or run without --ray)") from None


def check_address(address: str, timeout: float = 3.0) -> str:
    """``address`` (``host:port``, ``ray://host:port`` or ``auto``) when something listens there;
    otherwise a one-line error (Ray itself would retry for a minute)."""
    if not isinstance(address, str) or not address.strip():
        raise InputError("--ray-address is empty; give host:port of a running Ray head, or 'auto'")
    if address == "auto":
        return address
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379 or "
                         "ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                         "`ray start --head` or drop --ray-address") from None
    return address


class _Worker:
    """A Ray actor's state: one model, loaded once."""

    def __init__(self, spec: ModelSpec | Model, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = spec if isinstance(spec, Model) else spec.load()

    def run(self, fn: Callable[[Model, Any], Any], unit: Any) -> Any:
        return fn(self.model, unit)

    def pid(self) -> int:
        return os.getpid()


def _unwrap(exc: BaseException) -> BaseException:
    """The job's own exception inside a Ray task error (an :class:`LmxrayError` stays one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return exc


class RayExecutor:
    """Units on Ray actors, each holding its own copy of the model.

    Args:
        model: a :class:`ModelSpec` (each actor loads it) or a loaded :class:`Model` (copied to
            each actor once).
        workers: actors; default: one per GPU of the cluster, else 2.
        address: join this running cluster instead of starting a local one.
        gpus_per_worker: GPUs each actor takes (default: 1 when the cluster has GPUs, else 0).
        threads: torch CPU threads per actor (default: the CPUs divided among the actors).
        window: units in flight per actor (default 2: one running, one queued).
    """

    def __init__(self, model: ModelSpec | Model, *, workers: int | None = None, address: str | None = None,
                 gpus_per_worker: float | None = None, threads: int | None = None, window: int = 2) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError(f"workers must be a positive whole number, got {workers!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InputError(f"window must be a positive whole number, got {window!r}")
        ray = ray_module()
        if address is not None:
            check_address(address)
        self._ray = ray
        self._owns_cluster = False
        if not ray.is_initialized():
            self._start(address, workers)
        resources = ray.cluster_resources()
        n_gpus = int(resources.get("GPU", 0))
        gpu = gpus_per_worker if gpus_per_worker is not None else (1 if n_gpus else 0)
        n = workers or (max(1, int(n_gpus // gpu)) if gpu else 2)
        cpus = max(1, int(resources.get("CPU", 1)))
        threads = threads or max(1, cpus // n)
        actor = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(_Worker)
        opts = {"num_cpus": 0 if gpu else min(1, cpus / n), "num_gpus": gpu}
        shared = ray.put(model) if isinstance(model, Model) else (model.on_device("cuda") if gpu else model)
        self.actors = [actor.options(**opts).remote(shared, threads) for _ in range(n)]
        self.window = window
        self.info: dict[str, Any] = {"executor": "ray", "workers": n, "gpus_per_worker": gpu,
                                     "threads_per_worker": threads, "address": address or "local"}
        try:
            self.info["pids"] = self.pids()  # waits for every actor to load its model
        except Exception as exc:
            self.close()
            raise self._failure(exc) from None

    def _start(self, address: str | None, workers: int | None) -> None:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False, "ignore_reinit_error": True}
        if address is None:
            kw["num_cpus"] = max(workers or 2, 1)
            self._owns_cluster = True
        try:
            self._ray.init(address=address, **kw)
        except Exception as exc:
            raise InputError(f"cannot start or join a Ray cluster: {str(exc).splitlines()[0][:200]}") from None

    def pids(self) -> list[int]:
        """The process id of each actor (a restarted actor has a new one)."""
        return list(self._ray.get([a.pid.remote() for a in self.actors]))

    def map(self, fn: Callable[[Model, Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        """``fn(model, unit)`` on the actors; results in the units' order, each exactly once."""
        ray = self._ray
        pending: deque[Any] = deque()
        load = [0] * len(self.actors)
        owner: dict[Any, int] = {}
        todo = iter(units)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window * len(self.actors):
                unit = next(todo, _END)
                if unit is _END:
                    exhausted = True
                    break
                k = min(range(len(self.actors)), key=load.__getitem__)
                ref = self.actors[k].run.remote(fn, unit)
                load[k] += 1
                owner[ref] = k
                pending.append(ref)
            if not pending:
                return
            ref = pending.popleft()
            load[owner.pop(ref)] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:
                raise self._failure(exc) from None
            yield result

    def _failure(self, exc: BaseException) -> BaseException:
        inner = _unwrap(exc)
        if isinstance(inner, LmxrayError | KeyboardInterrupt):
            return inner
        first = (str(inner).strip().splitlines() or [type(inner).__name__])[0][:300]
        return LmxrayError(f"a Ray worker failed ({type(inner).__name__}: {first}); see the Ray logs")

    def close(self) -> None:
        """Stop the actors, and the local cluster when this executor started it."""
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a)
            except Exception:  # pragma: no cover - already gone
                pass
        self.actors = []
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_cluster = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_END = object()


def executor_for(spec: ModelSpec, *, use_ray: bool = False, address: str | None = None,
                 workers: int | None = None) -> RayExecutor | None:
    """The executor the command-line options ask for: ``None`` (in process) unless ``--ray`` or
    ``--ray-address``; ``--workers`` without either is refused (it would be ignored)."""
    if address is not None:
        check_address(address)
    if not use_ray and address is None:
        if workers is not None:
            raise InputError("--workers needs --ray (or --ray-address); without it the job runs in process")
        return None
    return RayExecutor(spec, workers=workers, address=address)
