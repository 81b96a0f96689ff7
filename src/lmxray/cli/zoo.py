"""``lmxray zoo``: train and evaluate the model organisms.

Mounted by the main CLI as ``app.add_typer(zoo.app, name="zoo")``::

    lmxray zoo train --out runs/tiny --steps 1800
    lmxray zoo eval --model runs/tiny --json eval.json

Errors follow the CLI's contract (:mod:`lmxray.cli._common`): one line on stderr, exit code 2,
outputs checked before any work and written atomically. Ctrl-C during training says that a
rerun resumes from the checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import InputError
from ._common import ResultJsonOpt, check_outputs, consoles, resumable, write_outputs

__all__ = ["app", "train", "eval_"]

app = typer.Typer(
    help="Model organisms: train and evaluate the zoo models.",
    no_args_is_help=True,
    add_completion=False,
)


def _check_out_dir(out: Path) -> None:
    """Before any work: ``--out`` is a folder (it and its parents are created if missing)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the model")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError(f"cannot create {out}: {blocking} is a file; give another --out")


@app.command()
def train(
    out: Path = typer.Option(Path("lmxray-tiny"), "--out", help="Output folder."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Training steps (default: the shipped model's)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of data, tokenizer and weights (default: the shipped model's)."
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore an existing checkpoint."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads."),
    organism: str | None = typer.Option(
        None, "--organism", metavar="NAME",
        help="Train a rationale-writing organism instead: rationale-faithful or rationale-unfaithful.",
    ),
) -> None:
    """Train the multi-task zoo model from scratch (Ctrl-C and rerun to resume), or with
    --organism one of the self-explanation organisms."""
    from ..zoo import organisms
    from ..zoo.train import DEFAULT_STEPS, SHIPPED_SEED
    from ..zoo.train import train as _train

    if organism is not None and organism not in organisms.ORGANISMS:
        raise InputError(
            f"unknown organism {organism!r}; choose one of {', '.join(organisms.ORGANISMS)}"
        )
    _check_out_dir(out)
    t0, c0 = time.time(), time.process_time()
    if organism is not None:
        path = organisms.train_organism(
            organism, out, seed=organisms.SHIPPED_SEED if seed is None else seed,
            steps=organisms.DEFAULT_STEPS if steps is None else steps, threads=threads,
        )
        typer.echo(f"trained {path} in {time.time() - t0:.0f} s wall, "
                   f"{time.process_time() - c0:.0f} s CPU")
        return
    with resumable(enabled=not no_resume, note=f"checkpoint in {out / 'checkpoint'}"):
        path = _train(
            out,
            steps=DEFAULT_STEPS if steps is None else steps,
            seed=SHIPPED_SEED if seed is None else seed,
            resume=not no_resume,
            threads=threads,
        )
    typer.echo(
        f"trained {path} in {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU"
    )


@app.command("eval")
def eval_(
    model: Path | None = typer.Option(None, "--model", help="Zoo model folder (default: shipped)."),
    json_out: ResultJsonOpt = None,
    n: int = typer.Option(500, "--n", min=1, help="Held-out examples per task (facts: every fact)."),
    verify_n: int = typer.Option(
        100, "--verify-n", min=0,
        help="Examples per task whose ground truth is verified (0: skip; facts: at most every fact).",
    ),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Per-task accuracy of a zoo model, and how many ground truths verify."""
    from ..zoo.tasks import all_facts
    from ..zoo.verify import ZooEvaluation, evaluate

    n_facts = len(all_facts("test"))
    if verify_n > n_facts:
        raise InputError(
            f"--verify-n {verify_n} is more than the {n_facts} facts to verify; give at most {n_facts}"
        )
    if model is not None and not (model / "config.json").is_file():
        raise InputError(f"no model at {model}: expected a folder with config.json")
    check_outputs(json_out)
    stdout, err = consoles()
    res = evaluate(model, n=n, seed=seed, verify_n=verify_n)
    result = ZooEvaluation(model=str(model or "lmxray-tiny"), n=n, seed=seed, tasks=res)
    result.show(stdout)
    write_outputs([(json_out, lambda: result.to_json(indent=1) + "\n")], err)
