"""The job queue of ``lmxray serve``: one worker thread, a bounded queue, progress and cancel.

Every computation runs on the one worker thread, so the models (loaded once) are never used by
two requests at a time. A job reports progress with :meth:`Job.step`; cancelling a running job
sets a flag that a forward pre-hook on the model checks at every forward pass of the model and
of its decoder layers, so even one long attribution stops within a layer's forward.
"""

from __future__ import annotations

import queue
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import LmxrayError
from ..hooks import observer

__all__ = ["Job", "JobQueue", "Cancelled", "QueueFull", "cancel_hooks", "TERMINAL"]

TERMINAL = ("done", "error", "cancelled")
GRACE_S = 120.0
_LAYER = re.compile(r"(^|\.)(layers|h|blocks|layer)\.\d+$")


class Cancelled(BaseException):
    """Raised inside a cancelled job's forward pass (a BaseException: ``except Exception`` in
    the library does not swallow it)."""


class QueueFull(Exception):
    """The bounded queue holds as many jobs as it may; the server answers 429."""


@dataclass
class Job:
    """One request's work and its state (read by the HTTP handlers, written by the worker)."""

    kind: str
    run: Callable[[Job], Any]
    id: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    state: str = "queued"
    label: str = "waiting in the queue"
    done: int = 0
    total: int = 0
    forwards: int = 0
    error: str | None = None
    status: int = 200
    output: Any = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    watchers: list[tuple[Any, Any]] = field(default_factory=list)

    def touch(self) -> None:
        """Count a change and wake the event streams watching this job (from any thread)."""
        self.version += 1
        for loop, event in list(self.watchers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that stream's loop is closed
                pass

    def step(self, label: str, done: int | None = None, total: int | None = None) -> None:
        """Report progress (``done`` of ``total`` units, and what is running now)."""
        if self.cancel_event.is_set():
            raise Cancelled()
        self.label = label
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        self.touch()

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "label": self.label,
            "done": self.done, "total": self.total, "forwards": self.forwards, "error": self.error,
            "status": self.status,
            "elapsed": round((self.finished or now) - (self.started or now), 3) if self.started else 0.0,
        }


@contextmanager
def cancel_hooks(hf_model: Any, job: Job) -> Iterator[None]:
    """Forward pre-hooks on the model and its decoder layers: count forwards, stop when cancelled."""

    @observer
    def hook(module: Any, args: Any) -> None:
        if job.cancel_event.is_set():
            raise Cancelled()
        if module is hf_model:
            job.forwards += 1
            job.touch()

    modules = [hf_model] + [m for name, m in hf_model.named_modules() if _LAYER.search(name)]
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class JobQueue:
    """A bounded FIFO of jobs and the one thread that runs them."""

    def __init__(self, size: int = 8, kept: int = 64) -> None:
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=size)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._kept = kept
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="lmxray-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; :class:`QueueFull` when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the server is busy: {self._queue.maxsize} jobs are waiting; "
                            "try again when one has finished") from None
        with self._lock:
            self._jobs[job.id] = job
            self._forget()
        return job

    def _forget(self) -> None:
        """Drop the oldest finished jobs beyond ``kept``; a job finished less than ``GRACE_S`` ago
        stays (its client may be about to fetch the result), as does every unfinished job."""
        now = time.time()
        extra = len(self._jobs) - self._kept
        for old in [j for j in self._jobs.values() if j.state in TERMINAL and now - (j.finished or now) > GRACE_S]:
            if extra <= 0:
                break
            del self._jobs[old.id]
            extra -= 1

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        job.cancel_event.set()
        with self._lock:  # the worker may be taking this job now: one of the two decides
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")

    def pending(self) -> int:
        return self._queue.qsize()

    def _finish(self, job: Job, state: str, label: str) -> None:
        job.finished = time.time()  # before the state: a snapshot that sees it finished has the time
        job.label = label
        job.state = state
        job.touch()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:  # a cancel racing with this start either finds it queued or running
                if job.cancel_event.is_set():
                    continue
                job.started = time.time()
                job.state = "running"
            job.touch()
            try:
                job.output = job.run(job)
            except Cancelled:
                self._finish(job, "cancelled", "cancelled")
            except LmxrayError as exc:
                job.error, job.status = str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 400
                self._finish(job, "error", "failed")
            except Exception as exc:  # a bug: say so as JSON, keep the worker alive
                job.error, job.status = f"internal error: {type(exc).__name__}: {exc}"[:300], 500
                self._finish(job, "error", "failed")
            else:
                self._finish(job, "done", "done")
