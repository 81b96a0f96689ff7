"""``lmxray serve``: the interactive explorer in the browser (mounted by :func:`register`).

    lmxray serve [--model NAME ...] [--host 127.0.0.1] [--port 8000] [--token TOKEN] [--sae NAME=FOLDER ...]

Binds 127.0.0.1 unless told otherwise; any other host needs an access token (``--token`` or the
``LMXRAY_TOKEN`` environment variable), else the command refuses to start (exit 2). The browser
chooses only among the ``--model`` names and ``--sae`` names given here (never a path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ._common import consoles

__all__ = ["register", "serve"]


def serve(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", metavar="NAME",
        help="A model to offer (repeat for several): hub id, folder or lmxray-tiny (default).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; not local: needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="LMXRAY_TOKEN", metavar="TOKEN",
        help="Access token (16+ characters) every request must carry; open the page with ?token=TOKEN.")] = None,
    queue: Annotated[int, typer.Option("--queue", min=1, max=1000, help="Jobs that may wait.")] = 8,
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", metavar="NAME=FOLDER",
        help="An SAE (SAELens folder) for the first model, offered by NAME in Judge > SAE features; repeatable.")] = None,
) -> None:
    """Serve the interactive explorer (Explain, Inside, Judge) in the browser; Ctrl-C stops."""
    try:
        from ..app import Limits, check_bind
        from ..app import serve as run_server
    except ModuleNotFoundError as exc:  # starlette / uvicorn are the `app` extra
        raise InputError(f"lmxray serve needs {exc.name}: pip install 'lmxray[app]'") from None

    check_bind(host, token)
    saes = _sae_specs(sae or [])
    _, err = consoles()

    def announce(url: str) -> None:
        err.print(f"lmxray serve: open {url} (Ctrl-C stops)", highlight=False, soft_wrap=True)

    run_server(model, host=host, port=port, token=token, limits=Limits(queue=queue), announce=announce,
               saes=saes)


def _sae_specs(specs: list[str]) -> dict[str, str]:
    """``NAME=FOLDER`` options as ``{name: folder}`` (the folders are read at start-up)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise InputError(f"--sae {spec[:80]!r} must be NAME=FOLDER (an SAE folder in SAELens format)")
        if name in out:
            raise InputError(f"--sae names {name!r} twice; give each SAE its own name")
        if not Path(folder).is_dir():
            raise InputError(f"--sae {name}: no SAE folder at {folder}" if not Path(folder).exists()
                             else f"--sae {name}: {folder} is a file; give the SAE's folder (cfg.json + weights)")
        out[name] = folder
    return out


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the main app."""
    app.command("serve")(serve)
