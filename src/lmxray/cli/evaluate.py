"""``lmxray evaluate``: the benchmark runner on the command line (a thin layer over
:func:`lmxray.evaluate.runner.evaluate`).

    lmxray evaluate [DATA] [--task NAME] [--n N] [--methods all|a,b] [--metrics all|a,b]
                    [--model ID_OR_PATH] [--out results.jsonl] [--no-resume]
                    [--csv FILE] [--html FILE] [--png FILE] [--json FILE] [--parquet FILE]
                    [--ray [--workers N] | --ray-address HOST:PORT]

``DATA`` is a JSONL file (``prompt``/``target``/``rationale``/``evidence`` fields), a Hugging Face
``datasets`` folder saved with ``save_to_disk``, or a zoo task name (``--task`` says the same).
Rows stream to ``--out`` (default ``evaluate-<data>.jsonl``); a rerun with the same options
resumes where the last one stopped (Ctrl-C says so). The leaderboard is printed, and written to
the requested files atomically once the run is complete. Every output path is checked before
any work.
``--ray`` runs the chunks of examples on a local Ray cluster (``--workers`` actors, each loading
the model once; one per GPU by default), ``--ray-address`` on a running one; the rows are the
same as in process (see :mod:`lmxray.jobs`).

The main CLI mounts this command with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import check_outputs, consoles, load_model, resumable, write_outputs
from .jobs import RayAddressOpt, RayOpt, WorkersOpt, job_executor

__all__ = ["register", "evaluate_command"]

_MetricsOpt = Annotated[
    str | None,
    typer.Option("--metrics", metavar="all|A,B", show_default=False,
                 help="Groups faithfulness, plausibility, groundtruth, sanity, or faithfulness "
                      "metric names; 'all' is every group, sanity included [default: every "
                      "group but sanity]."),
]


def evaluate_command(
    data: Annotated[
        str | None,
        typer.Argument(help="JSONL file, datasets folder, or zoo task name.", show_default=False),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", metavar="NAME", help="Zoo task (facts, recall, ioi...).")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", min=1, metavar="N",
                                          help="Use the first N examples (at most as many as "
                                               "there are).")] = None,
    split: Annotated[str, typer.Option("--split", help="Zoo task / dataset split.")] = "test",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the zoo task sample.")] = 0,
    methods: Annotated[
        str, typer.Option("--methods", metavar="all|A,B", help="Attribution methods to compare.")
    ] = "all",
    metrics: _MetricsOpt = None,
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
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also verify every explanation (Attribution.verify): verdict columns per "
        "row and verdict rates per method in the leaderboard.")] = False,
) -> None:
    """Compare attribution methods on faithfulness, plausibility, ground truth and sanity."""
    from ..evaluate.data import check_source, load_examples
    from ..evaluate.runner import evaluate

    if data is not None and task is not None:
        raise InputError("give the data either as DATA or as --task, not both")
    source = data if data is not None else task
    if source is None:
        raise InputError("give the data to evaluate on: a JSONL file, a datasets folder, or --task NAME")
    if removal not in ("remove", "baseline"):
        raise InputError(f"--removal must be remove or baseline, got {removal!r}")
    name = check_source(source)
    out = out if out is not None else Path(f"evaluate-{name}.jsonl")
    check_outputs(out, csv_out, html_out, png_out, json_out, parquet_out)
    stdout, err = consoles()
    with job_executor(model, device, ray, ray_address, workers) as executor:
        m = load_model(model, device)
        examples, name = load_examples(m, source, n=n, split=split, seed=seed)
        params: dict[str, dict[str, Any]] = {}
        if ig_steps is not None:
            params["integrated_gradients"] = {"n_steps": ig_steps}
        with resumable(enabled=resume, note=f"rows so far in {out}"):
            result = evaluate(
                m, examples, methods=methods, metrics=metrics, method_params=params, out=out,
                resume=resume, batch_size=batch_size, sanity_examples=sanity_examples,
                removal=removal, n_steps=n_steps, progress=progress, name=name, executor=executor,
                verify=verify,
            )
    result.show(stdout)
    write_outputs([(csv_out, result.to_csv), (html_out, result.to_html), (png_out, result.to_png),
                   (json_out, lambda: result.to_json() + "\n"),
                   (parquet_out, result.parquet_bytes)], err)
    err.print(f"rows in {out}", style="dim", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the main ``lmxray`` Typer app."""
    app.command("evaluate")(evaluate_command)
