"""``lmxray evaluate``: the benchmark runner on the command line (a thin layer over
:func:`lmxray.evaluate.runner.evaluate`).

    lmxray evaluate [DATA] [--task NAME] [--n N] [--methods all|a,b] [--metrics all|a,b]
                    [--model ID_OR_PATH] [--out results.jsonl] [--no-resume]
                    [--csv FILE] [--html FILE] [--png FILE] [--json FILE] [--parquet FILE]

``DATA`` is a JSONL file (``prompt``/``target``/``rationale``/``evidence`` fields), a Hugging Face
``datasets`` folder saved with ``save_to_disk``, or a zoo task name (``--task`` says the same).
Rows stream to ``--out`` (default ``evaluate-<data>.jsonl``); a rerun with the same options
resumes where the last one stopped. The leaderboard is printed, and written to the requested
files atomically once the run is complete.

The main CLI mounts this command with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError

__all__ = ["register", "evaluate_command"]


def evaluate_command(
    data: Annotated[
        str | None,
        typer.Argument(help="JSONL file, datasets folder, or zoo task name.", show_default=False),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", metavar="NAME", help="Zoo task (facts, recall, ioi...).")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", min=1, metavar="N", help="Use the first N examples.")] = None,
    split: Annotated[str, typer.Option("--split", help="Zoo task / dataset split.")] = "test",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the zoo task sample.")] = 0,
    methods: Annotated[
        str, typer.Option("--methods", metavar="all|A,B", help="Attribution methods to compare.")
    ] = "all",
    metrics: Annotated[
        str,
        typer.Option("--metrics", metavar="all|A,B",
                     help="faithfulness, plausibility, groundtruth, sanity, or faithfulness metric names."),
    ] = "all",
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="ID_OR_PATH",
                     help="Hub id or local model folder [default: the embedded model]."),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", metavar="cpu|cuda")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FILE", dir_okay=False,
                     help="Results file (JSONL), streamed and resumable [default: evaluate-<data>.jsonl]."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an existing --out.")] = True,
    csv_out: Annotated[Path | None, typer.Option("--csv", metavar="FILE", dir_okay=False)] = None,
    html_out: Annotated[Path | None, typer.Option("--html", metavar="FILE", dir_okay=False)] = None,
    png_out: Annotated[Path | None, typer.Option("--png", metavar="FILE", dir_okay=False)] = None,
    json_out: Annotated[Path | None, typer.Option("--json", metavar="FILE", dir_okay=False)] = None,
    parquet_out: Annotated[
        Path | None, typer.Option("--parquet", metavar="FILE", dir_okay=False, help="Rows as Parquet (pyarrow).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples explained together.")] = 8,
    sanity_examples: Annotated[
        int, typer.Option("--sanity-examples", min=1, help="Examples for the sanity check.")
    ] = 4,
    removal: Annotated[str, typer.Option("--removal", metavar="remove|baseline")] = "remove",
    n_steps: Annotated[int, typer.Option("--curve-steps", min=1, help="Deletion/insertion curve steps.")] = 20,
    ig_steps: Annotated[
        int | None, typer.Option("--ig-steps", min=1, help="Integrated-gradients steps [default: 32].")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Compare attribution methods on faithfulness, plausibility, ground truth and sanity."""
    from ..evaluate.data import load_examples
    from ..evaluate.runner import evaluate
    from ._common import check_outputs, load_model

    if data is not None and task is not None:
        raise InputError("give the data either as DATA or as --task, not both")
    source = data if data is not None else task
    if source is None:
        raise InputError("give the data to evaluate on: a JSONL file, a datasets folder, or --task NAME")
    if removal not in ("remove", "baseline"):
        raise InputError(f"--removal must be remove or baseline, got {removal!r}")
    from ..zoo import TASKS

    if not Path(source).exists() and source not in TASKS:
        raise InputError(
            f"{source!r} is neither a file, a datasets folder nor a zoo task ({', '.join(TASKS)})"
        )
    name = Path(source).stem if Path(source).exists() else str(source)
    out = out if out is not None else Path(f"evaluate-{name}.jsonl")
    check_outputs(out, csv_out, html_out, png_out, json_out, parquet_out)
    m = load_model(model, device)
    examples, name = load_examples(m, source, n=n, split=split, seed=seed)
    params: dict[str, dict[str, Any]] = {}
    if ig_steps is not None:
        params["integrated_gradients"] = {"n_steps": ig_steps}
    result = evaluate(
        m, examples, methods=methods, metrics=metrics, method_params=params, out=out,
        resume=resume, batch_size=batch_size, sanity_examples=sanity_examples, removal=removal,
        n_steps=n_steps, progress=progress, name=name,
    )
    from rich.console import Console

    result.show(Console(highlight=False))
    err = Console(stderr=True, highlight=False)
    writers = [(csv_out, result.to_csv), (html_out, result.to_html), (png_out, result.to_png),
               (parquet_out, result.to_parquet)]
    for path, write in writers:
        if path is not None:
            write(path)
            err.print(f"wrote {path}", style="dim", markup=False)
    if json_out is not None:
        from ..io import atomic_write_text

        atomic_write_text(json_out, result.to_json() + "\n")
        err.print(f"wrote {json_out}", style="dim", markup=False)
    err.print(f"rows in {out}", style="dim", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the main ``lmxray`` Typer app."""
    app.command("evaluate")(evaluate_command)
