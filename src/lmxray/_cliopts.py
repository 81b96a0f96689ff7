"""Option types shared by the CLI modules (here, not in ``cli.py``, so a subsystem's CLI can
import them without importing -- and mounting -- the root app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ModelOpt", "DeviceOpt", "JsonOpt", "ResultJsonOpt", "PngOpt", "HtmlOpt"]

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="ID_OR_PATH",
        help="Hugging Face hub id or local model folder (default: the embedded model).",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", metavar="cpu|cuda", help="Device to run on (default: the model's)."),
]


def _json_opt(what: str) -> typer.models.OptionInfo:
    return typer.Option(
        "--json",
        metavar="FILE",
        dir_okay=False,
        allow_dash=True,
        help=f"Write the result as JSON{what}; '-' for stdout.",
    )


JsonOpt = Annotated[Path | None, _json_opt(" (format lmxray.attribution/1)")]
# --json of commands whose result is not an Attribution
ResultJsonOpt = Annotated[Path | None, _json_opt("")]
PngOpt = Annotated[
    Path | None,
    typer.Option("--png", metavar="FILE", dir_okay=False, help="Write a PNG heat map."),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        metavar="FILE",
        dir_okay=False,
        allow_dash=True,
        help="Write a self-contained HTML report.",
    ),
]
