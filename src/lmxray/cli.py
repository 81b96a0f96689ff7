"""The ``lmxray`` command line: a thin layer over the Python API (it never computes).

Commands::

    lmxray explain PROMPT [--target TEXT | --max-new-tokens N] [--foil TEXT] [--method NAME]
                          [--model ID_OR_PATH] [--json FILE] [--html FILE] [--device cpu|cuda]
                          [--target-fn logprob|prob|logit] [--n-steps N] [--baseline B]
    lmxray methods
    lmxray zoo ...        (when the zoo sub-app is installed)

Error contract: every :class:`~lmxray.errors.LmxrayError` and every usage mistake prints ONE line
on stderr (``lmxray: error: ...``) and exits with code 2, without a traceback. Output folders are
checked before any work; results are computed completely before any file is written, and files
are written atomically, so a failed run leaves no partial output. Anything else is a bug and
keeps its traceback. Python warnings (e.g. integrated-gradients convergence) become one
``lmxray: warning: ...`` line each.

Adding a command (``lens``, ``trace``, ``evaluate``...) takes the same shape as :func:`explain`:
a positional input, the shared ``ModelOpt``/``DeviceOpt``/``JsonOpt``/``HtmlOpt`` options,
``check_outputs(...)`` first, then ``load_model(...)``, the API call, ``write_outputs(...)``;
raise ``LmxrayError`` for bad input and the group handles the rest.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from .errors import InputError, LmxrayError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .model import Model

__all__ = [
    "app",
    "main",
    "LmxrayGroup",
    "check_outputs",
    "write_outputs",
    "render_png",
    "load_model",
    "consoles",
    "ModelOpt",
    "DeviceOpt",
    "JsonOpt",
    "HtmlOpt",
    "PngOpt",
]

PROG = "lmxray"
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


_USAGE_ERRORS = _exception_types("ClickException")  # bad option, missing argument, out of range
_ABORTS = _exception_types("Abort") + (typer.Abort,)


class LmxrayGroup(TyperGroup):
    """The root command group: applies the error contract to every (sub)command."""

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
        except KeyboardInterrupt:
            sys.stderr.write(f"{PROG}: interrupted\n")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


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


# --------------------------------------------------------------------------- shared options
from ._cliopts import DeviceOpt, HtmlOpt, JsonOpt, ModelOpt, PngOpt  # noqa: E402


class TargetFnName(str, Enum):
    logprob = "logprob"
    prob = "prob"
    logit = "logit"


class NormalizeMode(str, Enum):
    step = "step"
    global_ = "global"


# --------------------------------------------------------------------------- shared helpers
def _is_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == "-"


def check_outputs(*paths: Path | None) -> None:
    """Fail before any work if an output cannot be written (missing folder, a folder, a clash)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        if path is None or _is_stdout(path):
            continue
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(
                f"cannot write {path}: folder {parent} does not exist; create it first"
            )
        if path.is_dir():
            raise InputError(f"cannot write {path}: it is a folder")
        if not os.access(parent, os.W_OK):
            raise InputError(f"cannot write {path}: folder {parent} is not writable")
        key = path.resolve()
        if key in seen:
            raise InputError(f"two outputs go to the same file {path}; give different names")
        seen[key] = path


def render_png(draw: Callable[[Any], Any]) -> bytes:
    """PNG bytes from a drawing function that takes a path or binary file (``a.to_png``,
    ``heatmap_png``...), so a PNG can be rendered before any file is written."""
    buf = io.BytesIO()
    draw(buf)
    return buf.getvalue()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(
    outputs: list[tuple[Path | None, Callable[[], str | bytes]]], console: Console
) -> None:
    """Render every output first (text or bytes), then write them all atomically.

    Args:
        outputs: ``(path, render)`` pairs; ``path=None`` skips, ``'-'`` prints to stdout.
            ``render`` returns ``str`` (written as UTF-8) or ``bytes`` (e.g. :func:`render_png`).
        console: where to report the files written (stderr console).
    """
    from .result import atomic_write_text

    rendered = [(path, render()) for path, render in outputs if path is not None]
    for path, data in rendered:
        if _is_stdout(path):
            if isinstance(data, bytes):
                sys.stdout.buffer.write(data)
            else:
                sys.stdout.write(data if data.endswith("\n") else data + "\n")
            sys.stdout.flush()
            continue
        try:
            if isinstance(data, bytes):
                _atomic_write_bytes(path, data)
            else:
                atomic_write_text(path, data)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        console.print(f"wrote {path}", style="dim", highlight=False, markup=False)


def load_model(model: str | None, device: str | None) -> Model:
    """``lmxray.load`` with the CLI's conventions (no model → the embedded default)."""
    import lmxray

    _quiet_transformers()
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    return lmxray.load(model, **kwargs) if model is not None else lmxray.load(**kwargs)


def _check_method(method: str) -> None:
    import lmxray

    known = lmxray.methods()
    if method not in known:
        raise InputError(f"unknown method {method!r}; choose one of: {', '.join(known)}")


def _parse_baseline(text: str) -> int | str:
    text = text.strip()
    if not text:
        raise InputError("--baseline is empty; use auto, zero, pad, unk, eos or a token id")
    return int(text) if text.lstrip("-").isdigit() else text


def consoles() -> tuple[Console, Console]:
    """``(stdout, stderr)`` rich consoles for a command's output and its status lines."""
    from rich.console import Console

    return Console(highlight=False), Console(stderr=True, highlight=False)


_consoles = consoles  # the name internals/cli.py imports


# --------------------------------------------------------------------------- commands
CLI_IG_STEPS = 128  # the API's default is 50 (peer parity); the CLI favours a converged answer


@app.command()
def explain(
    prompt: Annotated[str, typer.Argument(help="The prompt to explain.", show_default=False)],
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="TEXT",
            help="Continuation to explain (teacher-forced). Default: generate.",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-new-tokens",
            "-n",
            min=1,
            metavar="N",
            help=f"Generate N tokens greedily and explain them [default: {DEFAULT_NEW_TOKENS}].",
        ),
    ] = None,
    foil: Annotated[
        str | None,
        typer.Option(
            "--foil", metavar="TEXT", help="Contrastive alternative: explain f(target) - f(foil)."
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option("--method", metavar="NAME", help="Attribution method (see 'lmxray methods')."),
    ] = DEFAULT_METHOD,
    model: ModelOpt = None,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    device: DeviceOpt = None,
    target_fn: Annotated[
        TargetFnName, typer.Option("--target-fn", help="What to explain at each step.")
    ] = TargetFnName.logprob,
    n_steps: Annotated[
        int | None,
        typer.Option(
            "--n-steps", min=1, metavar="N",
            help="Integration steps (integrated gradients; default 128, enough for the 1% completeness check).",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", metavar="B", help="Baseline: auto, zero, pad, unk, eos or a token id."
        ),
    ] = None,
    normalize: Annotated[
        NormalizeMode, typer.Option("--normalize", help="Colour scale of the terminal view.")
    ] = NormalizeMode.step,
    max_steps: Annotated[
        int,
        typer.Option(
            "--max-steps", min=1, metavar="N", help="Show at most N steps in the terminal."
        ),
    ] = 20,
) -> None:
    """Attribute a target (given or generated) to the prompt tokens, and show the heatmap."""
    if target is not None and max_new_tokens is not None:
        raise InputError("give either --target or --max-new-tokens, not both")
    if foil is not None and target is None:
        raise InputError("--foil needs --target: the foil is contrasted with a given target")
    check_outputs(json_out, html_out)
    if _is_stdout(json_out) and _is_stdout(html_out):
        raise InputError("only one of --json and --html can go to stdout ('-')")
    _check_method(method)
    params: dict[str, Any] = {}
    if n_steps is not None:
        params["n_steps"] = n_steps
    elif method == "integrated_gradients":
        params["n_steps"] = CLI_IG_STEPS
    if baseline is not None:
        params["baseline"] = _parse_baseline(baseline)

    m = load_model(model, device)
    result = m.attribute(
        prompt,
        target=target,
        max_new_tokens=None if target is not None else (max_new_tokens or DEFAULT_NEW_TOKENS),
        foil=foil,
        method=method,
        target_fn=target_fn.value,
        **params,
    )
    assert not isinstance(result, list)

    out, err = consoles()
    to_stdout = _is_stdout(json_out) or _is_stdout(html_out)
    if not to_stdout:
        from .render.console import show_attribution

        show_attribution(result, console=out, max_steps=max_steps, normalize=normalize.value)
    write_outputs(
        [
            (json_out, lambda: result.to_json() + "\n"),
            (html_out, lambda: result.to_html()),
        ],
        err,
    )


@app.command()
def methods() -> None:
    """List the registered attribution methods."""
    from rich.table import Table
    from rich.text import Text

    import lmxray

    out, _ = consoles()
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("method", no_wrap=True)
    table.add_column("description")
    for name, desc in lmxray.methods().items():
        table.add_row(Text(name, style="bold"), Text(desc))
    out.print(table)


# --------------------------------------------------------------------------- optional sub-apps
def _mount_zoo(module: Any) -> None:
    app.add_typer(module.app, name="zoo")


def _mount_register(module: Any) -> None:
    module.register(app)  # the module adds its commands to the root app


# (module, mount): commands that live with their subsystem and may not be installed yet.
OPTIONAL_COMMANDS: list[tuple[str, Callable[[Any], None]]] = [
    ("zoo.cli", _mount_zoo),
    ("evaluate.cli", _mount_register),
    ("internals.cli", _mount_register),
    ("improve.cli", _mount_register),
    ("blackbox.cli", _mount_register),
]


_MOUNTED: set[str] = set()


def _mount_optional_apps() -> None:
    """Mount sub-apps that live in other modules. Only *absence* of the module is tolerated:
    a sub-app that exists but fails to import raises (a broken install must not hide)."""
    from importlib import import_module

    for rel, mount in OPTIONAL_COMMANDS:
        name = f"{__package__}.{rel}"
        if name in _MOUNTED:
            continue
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name in (name, name.rsplit(".", 1)[0]):
                continue
            raise
        mount(module)
        _MOUNTED.add(name)


_mount_optional_apps()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lmxray = "lmxray.cli:main"``)."""
    command = typer.main.get_command(app)
    command.main(args=argv, prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()
