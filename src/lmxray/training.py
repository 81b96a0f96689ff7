"""The one training loop of lmxray: checkpoints, exact resumption, progress bar, seeds, and
Ctrl-C / SIGTERM handling. Zoo training (:mod:`lmxray.zoo.train`) and fine-tuning
(:mod:`lmxray.improve.regularise`) both run on it.

A checkpoint is a folder of plain files, written through :mod:`lmxray.io` (no pickle, one
permission rule):

- ``model.safetensors``: the model's weights (tied weights stored once);
- ``optimizer.safetensors``: the optimiser's per-parameter tensors (``state.<i>.<name>``, ``i``
  the parameter's index in ``model.parameters()``) and, when asked, the torch RNG state
  (``rng.torch``); its metadata says ``format: lmxray.checkpoint/1``;
- ``state.json``: the caller's JSON state (step, settings, history...).

The folder is written beside the old one and swapped in, so a crash leaves the old checkpoint or
the new one. Reading never unpickles: safetensors and JSON only. Checkpoints written before this
module (same layout, no ``format`` metadata) still load.

**Exact resumption.** :func:`run_steps` never stops in the middle of a step: Ctrl-C (SIGINT) and
SIGTERM only set a flag, the step in progress completes, a checkpoint is written at the next step
boundary and :class:`Interrupted` (a ``KeyboardInterrupt``) is raised. A second Ctrl-C stops at
once, keeping the last checkpoint. Each step's randomness must be a function of ``(seed, step)``
(:func:`step_generator`, :func:`step_rng`) or of state saved in the checkpoint (``rng=True``), so
a resumed run computes the same losses and weights as an uninterrupted one.

Example::

    ckpt = Path("run/checkpoint")
    state = read_state(ckpt) or {"step": 0}
    if state["step"]:
        load_checkpoint(ckpt, model, opt)

    def step(i):
        loss = ...; opt.step()
        return {"loss": f"{loss:.3f}"}            # shown on the progress bar

    def save(at):
        save_checkpoint(ckpt, model, opt, {"step": at})

    run_steps(step, start=state["step"], end=100, checkpoint=save, checkpoint_every=10)
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .errors import FormatError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Interrupted",
    "save_checkpoint",
    "load_checkpoint",
    "read_state",
    "remove_checkpoint",
    "run_steps",
    "interrupt_at_step_boundary",
    "step_generator",
    "step_rng",
    "warmup_cosine",
]

CHECKPOINT_FORMAT = "lmxray.checkpoint/1"
_MODEL, _OPT, _STATE = "model.safetensors", "optimizer.safetensors", "state.json"


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after writing a checkpoint (or, on a second
    Ctrl-C, keeping the last one). ``step``: steps done and saved; ``checkpoint``: its folder
    (None when the run had no checkpoint folder)."""

    def __init__(self, step: int, checkpoint: Path | None = None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- seeds
def warmup_cosine(lr: float, step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """The learning rate at ``step`` of ``steps``: a linear warm-up over ``warmup`` steps, then a
    cosine decay from ``lr`` to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """A torch CPU generator that is a function of ``(seed, step)`` only (resumes exactly)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def step_rng(seed: int, step: int) -> np.random.Generator:
    """A numpy generator that is a function of ``(seed, step)`` only."""
    return np.random.default_rng([int(seed), int(step)])


# --------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(model: Any, opt: Any, rng: bool) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    if rng:
        tensors["rng.torch"] = torch.get_rng_state()
    for i, p in enumerate(model.parameters()):
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().clone().contiguous().cpu()
    if not tensors:
        tensors["meta.placeholder"] = torch.zeros(1)  # an optimiser before its first step
    return tensors


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: Any,
    opt: Any,
    state: Mapping[str, Any],
    *,
    rng: bool = False,
    extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write a checkpoint folder: weights, optimiser state (and the torch RNG state when
    ``rng``), ``state`` as JSON, and whatever ``extra(tmp_folder)`` adds (e.g. a tokenizer).

    The new folder is filled beside ``folder`` and swapped in; the old one is removed last.
    """
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    for f in (tmp, old):
        if f.exists():
            shutil.rmtree(f)
    tmp.mkdir()
    meta = {"format": CHECKPOINT_FORMAT}
    io.atomic_write_with(tmp / _MODEL, lambda p: save_model(model, p, metadata=meta),
                         suffix=".tmp.safetensors")
    tensors = _optimizer_tensors(model, opt, rng)
    io.atomic_write_with(tmp / _OPT, lambda p: save_file(tensors, p, metadata=meta),
                         suffix=".tmp.safetensors")
    io.atomic_write_text(tmp / _STATE, io.dumps(dict(state), indent=1))
    if extra is not None:
        extra(tmp)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def _checked_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fmt = (fh.metadata() or {}).get("format")
    except Exception as exc:  # safetensors raises its own error types
        raise FormatError(f"cannot read {path} as safetensors: {exc}") from None
    if fmt not in (None, CHECKPOINT_FORMAT):  # None: written before lmxray.training
        raise FormatError(f"{path} is not an lmxray checkpoint (format {fmt!r}); "
                          "pass --no-resume to start over")


def read_state(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON state of the checkpoint in ``folder``, or None when there is none."""
    path = Path(folder) / _STATE
    if not path.is_file():
        return None
    state = io.read_json(path, what="checkpoint state")
    if not isinstance(state, dict):
        raise FormatError(f"{path} is not a checkpoint state (a JSON object); "
                          "pass --no-resume to start over")
    return state


def load_checkpoint(
    folder: str | os.PathLike[str], model: Any, opt: Any, *, rng: bool = False
) -> dict[str, Any]:
    """Restore ``model`` and ``opt`` (and the torch RNG state when ``rng``) from ``folder``;
    returns its JSON state. Only safetensors and JSON are read."""
    from safetensors.torch import load_file, load_model

    folder = Path(folder)
    for name in (_MODEL, _OPT):
        _checked_safetensors(folder / name)
    device = next(iter(model.parameters())).device
    load_model(model, str(folder / _MODEL), device=str(device))
    tensors = load_file(str(folder / _OPT))
    if rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    params = list(model.parameters())
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, k = key.split(".", 2)
            p = params[int(i)]
            opt.state[p][k] = v.to(p.device)
    state = read_state(folder)
    if state is None:
        raise FormatError(f"the checkpoint in {folder} has no {_STATE}; pass --no-resume")
    return state


def remove_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Remove a checkpoint folder (and a half-written sibling), if any."""
    folder = Path(folder)
    for f in (folder, folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")):
        if f.exists():
            shutil.rmtree(f)


# --------------------------------------------------------------------------- the loop
@contextlib.contextmanager
def interrupt_at_step_boundary() -> Iterator[dict[str, bool]]:
    """Inside the block, Ctrl-C and SIGTERM set ``flag["stop"]`` instead of raising (a second
    Ctrl-C raises ``KeyboardInterrupt`` at once). Outside the main thread, where handlers cannot
    be installed, Ctrl-C raises as usual and the flag stays False."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_steps(
    step_fn: Callable[[int], Mapping[str, Any] | None],
    *,
    start: int,
    end: int,
    total: int | None = None,
    checkpoint: Callable[[int], Any] | None = None,
    checkpoint_every: int = 100,
    checkpoint_folder: Path | None = None,
    desc: str = "train",
    progress: bool = True,
) -> int:
    """Run ``step_fn(step)`` for ``step`` in ``start..end-1`` with a progress bar.

    Args:
        step_fn: one optimisation step; may return values for the bar's postfix.
        start / end: first step and the step to stop before; total: the run's length (the
            bar's total, default ``end``).
        checkpoint: ``checkpoint(steps_done)`` writes a checkpoint; called every
            ``checkpoint_every`` steps (not at ``end``: the caller saves its result) and when
            interrupted.
        checkpoint_folder: reported by :class:`Interrupted`.
        desc / progress: the bar's label; ``progress=False`` hides it.

    Returns:
        ``end`` (the steps done).

    Raises:
        Interrupted: on Ctrl-C / SIGTERM, after the step in progress and a checkpoint.
        KeyboardInterrupt: on a second Ctrl-C (at once; the last checkpoint is kept).
    """
    from tqdm.auto import tqdm

    bar = tqdm(range(start, end), initial=start, total=total if total is not None else end,
               disable=not progress, desc=desc, unit="step")
    try:
        with interrupt_at_step_boundary() as flag:
            for step in bar:
                post = step_fn(step)
                done = step + 1
                if post:
                    bar.set_postfix(**post)
                if flag["stop"]:
                    bar.close()
                    if checkpoint is not None:
                        checkpoint(done)
                    raise Interrupted(done, checkpoint_folder if checkpoint is not None else None)
                if checkpoint is not None and done % checkpoint_every == 0 and done < end:
                    checkpoint(done)
    finally:
        bar.close()
    return end
