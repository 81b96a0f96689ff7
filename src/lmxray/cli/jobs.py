"""``lmxray attribute-dataset`` and the options every dataset job shares (``--ray``,
``--ray-address``, ``--workers``): a thin layer over :mod:`lmxray.jobs`.

    lmxray attribute-dataset ROWS.jsonl --out attr.parquet [--method NAME] [--ig-steps N]
                             [--batch-size N] [--ray [--workers N] | --ray-address HOST:PORT]

Rows (``prompt``, optional ``target`` and ``id``) are explained in order, a chunk at a time, and
streamed to ``--out`` (``.jsonl``, or ``.parquet`` written at the end from a resumable
``.partial.jsonl``); a rerun with the same options resumes. In process by default; ``--ray``
starts a local Ray cluster (``--workers`` CPU actors, or one per GPU), ``--ray-address`` joins
one; each worker loads the model once. Ray is imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import (
    DeviceOpt,
    ModelOpt,
    check_method,
    check_outputs,
    consoles,
    load_model,
    resumable,
)

__all__ = ["register", "attribute_dataset_command", "RayOpt", "RayAddressOpt", "WorkersOpt", "job_executor"]

RayOpt = Annotated[bool, typer.Option("--ray", help="Run on a local Ray cluster (pip install 'lmxray[ray]').")]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", metavar="HOST:PORT", help="Join this running Ray cluster ('auto': this machine's)."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, metavar="N", help="Ray actors, one model each [default: one per GPU, else 2]."),
]


@contextlib.contextmanager
def job_executor(model: str | None, device: str | None, ray: bool, address: str | None,
                 workers: int | None) -> Iterator[Any]:
    """The executor of ``--ray`` / ``--ray-address`` (``None``: in process), closed at the end;
    a missing Ray, an unreachable address or ``--workers`` alone fail here, before any work."""
    from ..jobs import ModelSpec, executor_for

    executor = executor_for(ModelSpec(model, device), use_ray=ray, address=address, workers=workers)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def attribute_dataset_command(
    data: Annotated[Path, typer.Argument(help="JSONL rows: prompt, optional target and id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", dir_okay=False,
                                      help="Attributions, one per row: *.jsonl or *.parquet.")],
    method: Annotated[str, typer.Option("--method", help="Attribution method.")] = "integrated_gradients",
    ig_steps: Annotated[int | None, typer.Option("--ig-steps", min=1, help="Integrated-gradients steps.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows explained together.")] = 8,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an existing --out.")] = True,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Attribute every row of a JSONL dataset; one attribution per row to Parquet or JSONL."""
    from ..jobs import attribute_dataset, read_rows

    check_method(method)
    if ig_steps is not None and method != "integrated_gradients":
        raise InputError("--ig-steps applies to --method integrated_gradients only; drop it")
    if out.suffix.lower() not in (".jsonl", ".parquet"):
        raise InputError(f"cannot tell the output format of {out}; name it *.jsonl or *.parquet")
    check_outputs(out)
    rows = read_rows(data)
    _, err = consoles()
    with job_executor(model, device, ray, ray_address, workers) as executor:
        m = load_model(model, device)
        params = {"n_steps": ig_steps} if ig_steps is not None else {}
        with resumable(enabled=resume, note=f"rows so far in {out}"):
            res = attribute_dataset(m, rows, method=method, params=params, out=out, resume=resume,
                                    batch_size=batch_size, executor=executor, progress=progress)
    err.print(f"{len(res)} attributions in {out} ({res.info['resumed_rows']} resumed)", style="dim",
              markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``attribute-dataset`` to the main ``lmxray`` Typer app."""
    app.command("attribute-dataset")(attribute_dataset_command)
