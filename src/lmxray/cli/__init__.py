"""The ``lmxray`` command line: a thin layer over the Python API (it never computes).

One module per command group, each with a ``register(app)`` (or a sub-app) that this package
calls; the feature packages never import the CLI. Shared pieces (error contract, outputs, model
loading, option types) are in :mod:`lmxray.cli._common`.

Command modules import the feature packages inside each command: the documented lazy loading that
keeps ``lmxray --help`` and option errors fast (torch and transformers load only when a command
runs).

Adding a command: a positional input, the shared option types, ``check_outputs(...)`` first, then
``load_model(...)``, the API call, ``write_outputs(...)``; raise ``LmxrayError`` for bad input and
the group handles the rest.
"""

from __future__ import annotations

import typer

from . import concepts, evaluate, explain, improve, internals, jobs, selfexplain, serve, served, zoo
from ._common import (
    PROG,
    LmxrayGroup,
    check_outputs,
    consoles,
    load_model,
    render_png,
    write_outputs,
)

__all__ = ["app", "main", "LmxrayGroup", "check_outputs", "write_outputs", "render_png", "load_model",
           "consoles"]

app = typer.Typer(
    name=PROG,
    cls=LmxrayGroup,
    help="Explain large language models: token attribution, internals, evaluation.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Explain large language models: token attribution, internals, evaluation."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)



for _group in (explain, internals, evaluate, improve, served, selfexplain, concepts, serve, jobs):
    _group.register(app)
app.add_typer(zoo.app, name="zoo")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lmxray = "lmxray.cli:main"``)."""
    command = typer.main.get_command(app)
    command.main(args=argv, prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()
