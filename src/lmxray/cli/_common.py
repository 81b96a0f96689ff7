"""What every ``lmxray`` command shares: the error contract, output checks and writes, model
loading, consoles and option types.

Error contract: every :class:`~lmxray.errors.LmxrayError` and every usage mistake prints ONE line
on stderr (``lmxray: error: ...``) and exits with code 2, without a traceback. Output paths are
checked before any work (:func:`lmxray.io.check_outputs`); results are computed completely before
any file is written, and files are written atomically (:mod:`lmxray.io`), so a failed run leaves
no partial output. Anything else is a bug and keeps its traceback. Python warnings become one
``lmxray: warning: ...`` line each. Ctrl-C exits 130 with one line: ``lmxray: interrupted``, or
``lmxray: interrupted; rerun the same command to resume`` inside :func:`resumable` (commands that
continue from a checkpoint or an existing output on the next run use it around their work).

Lazy imports: command functions import their feature packages inside the function, so that
``lmxray --help`` and a bad option fail fast without importing torch; this package is the only
place in lmxray where function-level imports of lmxray modules are allowed.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from .. import io as lmx_io
from ..errors import InputError, LmxrayError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..model import Model


__all__ = [
    "LmxrayGroup", "PROG", "check_outputs", "write_outputs", "render_png", "load_model", "consoles",
    "check_method", "is_stdout", "ModelOpt", "DeviceOpt", "JsonOpt", "ResultJsonOpt", "HtmlOpt",
    "PngOpt", "show_result", "resumable", "Interrupted", "RESUME_HINT", "MaxNewTokensOpt",
    "count_option", "check_target_options", "check_result_outputs", "emit_result",
]

PROG = "lmxray"
# the API's defaults (lmxray.attribution.api), repeated here for --help text only, which must not
# import torch; tests/test_core_plumbing.py checks that they agree
DEFAULT_METHOD = "integrated_gradients"
DEFAULT_NEW_TOKENS = 5


# --------------------------------------------------------------------------- error handling
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str) -> int:
    """Print one error line on stderr; return the exit code (2)."""
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()
    return 2


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    sys.stderr.write(f"{PROG}: warning: {_one_line(str(message))}\n")


_RESTORE: list[Callable[[], None]] = []


def _quiet_transformers() -> None:
    """Silence transformers' info logs and progress bars until the command ends."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _RESTORE.append(lambda: hf_logging.set_verbosity(level))
    if bars:
        _RESTORE.append(hf_logging.enable_progress_bar)


@contextlib.contextmanager
def _cli_environment() -> Iterator[None]:
    """One-line warnings; library noise restored to its state when the command ends."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        try:
            yield
        finally:
            while _RESTORE:
                _RESTORE.pop()()


def _exception_types(*names: str) -> tuple[type[BaseException], ...]:
    """Exception classes of both click flavours (recent typer releases vendor their own click)."""
    found: list[type[BaseException]] = []
    for mod_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(mod_name, fromlist=list(names))
        except ImportError:
            continue
        found.extend(getattr(mod, n) for n in names if hasattr(mod, n))
    return tuple(dict.fromkeys(found))


RESUME_HINT = "rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside :func:`resumable`: the command can be rerun to continue.

    Attributes:
        resumable: whether rerunning the same command resumes the work.
        note: optional detail for the message (e.g. where the checkpoint is).
    """

    def __init__(self, resumable: bool = True, note: str = "") -> None:
        super().__init__(note)
        self.resumable = resumable
        self.note = note


@contextlib.contextmanager
def resumable(enabled: bool = True, note: str = "") -> Iterator[None]:
    """Ctrl-C inside the block ends the command with ``lmxray: interrupted; rerun the same
    command to resume`` (exit 130) instead of ``lmxray: interrupted``.

    Use it around the work of a command that resumes (a checkpoint, an ``--out`` it continues),
    with ``enabled=False`` when resuming is switched off (``--no-resume``)::

        with resumable(enabled=resume, note=f"checkpoint in {out}"):
            run(...)
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        if not enabled or isinstance(exc, Interrupted):
            raise
        raise Interrupted(True, note) from None


def interrupted_message(exc: BaseException) -> str:
    """The one line printed for Ctrl-C (without the program name)."""
    if isinstance(exc, Interrupted) and exc.resumable:
        return f"interrupted; {RESUME_HINT}" + (f" ({_one_line(exc.note)})" if exc.note else "")
    return "interrupted"


_USAGE_ERRORS = _exception_types("ClickException")  # bad option, missing argument, out of range
_ABORTS = _exception_types("Abort") + (typer.Abort,)


class _Stopped(Exception):
    """Ctrl-C on its way out: typer turns a KeyboardInterrupt into a silent exit 130, so the
    line to print travels in this exception instead."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class LmxrayGroup(TyperGroup):
    """The root command group: applies the error contract to every (sub)command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(interrupted_message(exc)) from None

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code: int = 0
        try:
            with _cli_environment():
                rv = super().main(
                    args=args,
                    prog_name=prog_name or PROG,
                    complete_var=complete_var,
                    standalone_mode=False,
                    **extra,
                )
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except _USAGE_ERRORS as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            code = _fail(exc.format_message() + hint)  # type: ignore[attr-defined]
        except LmxrayError as exc:
            code = _fail(str(exc) or type(exc).__name__)
        except _ABORTS:
            sys.stderr.write(f"{PROG}: aborted\n")
            code = 130
        except _Stopped as exc:
            sys.stderr.write(f"{PROG}: {exc.line}\n")
            code = 130
        except KeyboardInterrupt as exc:
            sys.stderr.write(f"{PROG}: {interrupted_message(exc)}\n")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


# --------------------------------------------------------------------------- shared helpers
def is_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == "-"


def check_outputs(*paths: Path | None) -> None:
    """Fail before any work if an output cannot be written (missing folder, a folder, a clash)."""
    lmx_io.check_outputs(*paths)


def render_png(draw: Callable[[Any], Any]) -> bytes:
    """PNG bytes from a drawing function that takes a path or binary file (``a.to_png``,
    ``heatmap_png``...), so a PNG can be rendered before any file is written."""
    buf = io.BytesIO()
    draw(buf)
    return buf.getvalue()


def write_outputs(
    outputs: list[tuple[Path | None, Callable[[], str | bytes]]], console: Console
) -> None:
    """Render every output first (text or bytes), then write them all atomically.

    Args:
        outputs: ``(path, render)`` pairs; ``path=None`` skips, ``'-'`` prints to stdout.
            ``render`` returns ``str`` (written as UTF-8) or ``bytes`` (e.g. :func:`render_png`).
        console: where to report the files written (stderr console).
    """
    rendered = [(path, render()) for path, render in outputs if path is not None]
    for path, data in rendered:
        if is_stdout(path):
            if isinstance(data, bytes):
                sys.stdout.buffer.write(data)
            else:
                sys.stdout.write(data if data.endswith("\n") else data + "\n")
            sys.stdout.flush()
            continue
        try:
            if isinstance(data, bytes):
                lmx_io.atomic_write_bytes(path, data)
            else:
                lmx_io.atomic_write_text(path, data)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        console.print(f"wrote {path}", style="dim", highlight=False, markup=False)


def load_model(model: str | None, device: str | None) -> Model:
    """``lmxray.load`` with the CLI's conventions (no model → the embedded default)."""
    from ..model import load

    _quiet_transformers()
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    return load(model, **kwargs) if model is not None else load(**kwargs)


def show_result(result: Any, console: Console, **kwargs: Any) -> None:
    """Print an Attribution's view: coloured on a terminal; plain text with every score when
    stdout is a pipe or a file (colours would be lost, and the numbers with them)."""
    from ..render.console import attribution_text, show_attribution

    if console.is_terminal:
        show_attribution(result, console=console, **kwargs)
        return
    kwargs.pop("normalize", None)  # colours only
    sys.stdout.write(attribution_text(result, **kwargs))
    sys.stdout.flush()


def check_method(method: str) -> None:
    import lmxray

    known = lmxray.methods()
    if method not in known:
        raise InputError(f"unknown method {method!r}; choose one of: {', '.join(known)}")


def check_target_options(target: str | None, max_new_tokens: int | None, foil: str | None) -> None:
    """``--target`` / ``--max-new-tokens`` / ``--foil`` of the explain commands, checked."""
    if target is not None and max_new_tokens is not None:
        raise InputError("give either --target or --max-new-tokens, not both")
    if foil is not None and target is None:
        raise InputError("--foil needs --target: the foil is contrasted with a given target")


def check_result_outputs(json_out: Path | None, html_out: Path | None) -> None:
    """Before any work: the outputs can be written, and at most one of them goes to stdout."""
    check_outputs(json_out, html_out)
    if is_stdout(json_out) and is_stdout(html_out):
        raise InputError("only one of --json and --html can go to stdout ('-')")


def emit_result(result: Any, json_out: Path | None, html_out: Path | None, **show_kw: Any) -> None:
    """Show an Attribution (unless a file goes to stdout) and write its JSON and HTML."""
    out, err = consoles()
    if not (is_stdout(json_out) or is_stdout(html_out)):
        show_result(result, out, **show_kw)
    write_outputs(
        [(json_out, lambda: result.to_json() + "\n"), (html_out, lambda: result.to_html())], err
    )


def consoles() -> tuple[Console, Console]:
    """``(stdout, stderr)`` rich consoles for a command's output and its status lines."""
    from rich.console import Console

    return Console(highlight=False), Console(stderr=True, highlight=False)





# --------------------------------------------------------------------------- option types
def count_option(*names: str, help: str) -> typer.models.OptionInfo:
    """An option taking a positive integer ``N``."""
    return typer.Option(*names, min=1, metavar="N", help=help)


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


MaxNewTokensOpt = Annotated[int | None, count_option(
    "--max-new-tokens", "-n",
    help=f"Generate N tokens greedily and explain them [default: {DEFAULT_NEW_TOKENS}].",
)]


def _json_opt(what: str) -> typer.models.OptionInfo:
    return typer.Option(
        "--json",
        metavar="FILE",
        dir_okay=False,
        allow_dash=True,
        help=f"Write the result as JSON{what}; '-' for stdout.",
    )


JsonOpt = Annotated[Path | None, _json_opt(" (format lmxray.attribution/2)")]
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
