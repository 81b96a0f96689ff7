"""``lmxray zoo``: train and evaluate the model organisms.

Mounted by the main CLI as ``app.add_typer(zoo.app, name="zoo")``::

    lmxray zoo train --out runs/tiny --steps 1800
    lmxray zoo eval --model runs/tiny --json eval.json

Errors a user can cause print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..errors import LmxrayError

app = typer.Typer(
    help="Model organisms: train and evaluate the zoo models.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    out: Path = typer.Option(Path("lmxray-tiny"), "--out", help="Output folder."),
    steps: int | None = typer.Option(
        None, "--steps", help="Training steps (default: the shipped model's)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of data, tokenizer and weights (default: the shipped model's)."
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore an existing checkpoint."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
) -> None:
    """Train the multi-task zoo model from scratch (Ctrl-C and rerun to resume)."""
    from lmxray.zoo.train import DEFAULT_STEPS, SHIPPED_SEED
    from lmxray.zoo.train import train as _train

    t0, c0 = time.time(), time.process_time()
    try:
        path = _train(
            out,
            steps=DEFAULT_STEPS if steps is None else steps,
            seed=SHIPPED_SEED if seed is None else seed,
            resume=not no_resume,
            threads=threads,
        )
    except LmxrayError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted; checkpoint saved in {out / 'checkpoint'}; rerun to resume", err=True
        )
        raise typer.Exit(130) from None
    typer.echo(
        f"trained {path} in {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU"
    )


@app.command("eval")
def eval_(
    model: Path | None = typer.Option(None, "--model", help="Zoo model folder (default: shipped)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics as JSON."),
    n: int = typer.Option(500, "--n", help="Held-out examples per task."),
    verify_n: int = typer.Option(
        100, "--verify-n", help="Examples per task whose ground truth is verified (0: skip)."
    ),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Per-task accuracy of a zoo model, and how many ground truths verify."""
    from rich.console import Console
    from rich.table import Table

    from lmxray.zoo.verify import evaluate

    if n <= 0 or verify_n < 0:
        _fail(f"--n must be positive and --verify-n >= 0, got {n} and {verify_n}")
    if model is not None and not (model / "config.json").is_file():
        _fail(f"no model at {model}: expected a folder with config.json")
    if json_out is not None and json_out.parent and not json_out.parent.exists():
        _fail(f"folder {json_out.parent} does not exist; create it or choose another --json path")
    try:
        res = evaluate(model, n=n, seed=seed, verify_n=verify_n)
    except LmxrayError as e:
        _fail(str(e))
    table = Table(title=f"zoo eval: {model or 'lmxray-tiny (shipped)'}")
    for col in ("task", "metric", "value", "n", "verified", "details"):
        table.add_column(col, justify="left" if col in ("task", "metric", "details") else "right")
    for task, row in res.items():
        details = ", ".join(
            f"{k}={v}"
            for k, v in row.items()
            if k not in ("metric", "value", "n", "verified", "verify_n")
        )
        ver = f"{row['verified']}/{row['verify_n']}" if "verified" in row else ""
        table.add_row(task, row["metric"], f"{row['value']}", str(row["n"]), ver, details)
    Console().print(table)
    if json_out is not None:
        payload = {
            "format": "lmxray.zoo.eval/1",
            "model": str(model or "lmxray-tiny"),
            "n": n,
            "seed": seed,
            "tasks": res,
        }
        json_out.write_text(json.dumps(payload, indent=1))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
