"""The bad-input corpus harness: each case runs one CLI command (in process, through the real
root app) or one API call, and must fail cleanly.

A clean CLI failure: exit code 2, exactly one ``lmxray: error: ...`` line on stderr naming what to
do, no traceback, and none of the named output files (nor a temporary sibling) left behind.
A clean API failure: an :class:`lmxray.errors.LmxrayError` (a ``ValueError`` subclass where the
input's value is wrong) with a one-line message.

Each area keeps its cases in ``tests/test_bad_input_<area>.py`` as ``CLI_CASES`` / ``API_CASES``
lists; ``tests/test_bad_input_corpus.py`` counts them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from lmxray import cli
from lmxray.errors import LmxrayError

_runner = CliRunner()


@functools.lru_cache(maxsize=1)
def embedded_model() -> Any:
    """The embedded default model, loaded once per session and shared by the API cases that only
    need some model to reject bad input with (each case fails before any work is done on it)."""
    import lmxray

    return lmxray.load()


@dataclass
class CliCase:
    """``lmxray ARGS`` must exit 2 with one line containing ``match``; ``outputs`` must not exist.

    ``args`` may hold ``{tmp}`` (a fresh folder per case), ``{data}`` (tests' data folder).
    ``setup(tmp)`` can write input files first.
    """

    id: str
    args: Sequence[str]
    match: str
    outputs: Sequence[str] = ()
    setup: Callable[[Path], Any] | None = None


@dataclass
class ApiCase:
    """``call(tmp)`` must raise ``exc`` (an LmxrayError subclass) whose message contains ``match``."""

    id: str
    call: Callable[[Path], Any]
    match: str
    exc: type[BaseException] = LmxrayError
    outputs: Sequence[str] = field(default_factory=tuple)


def _fmt(arg: str, tmp: Path) -> str:
    return str(arg).replace("{tmp}", str(tmp))


def run_cli_case(case: CliCase, tmp: Path) -> None:
    if case.setup is not None:
        case.setup(tmp)
    result = _runner.invoke(cli.app, [_fmt(a, tmp) for a in case.args])
    err = result.stderr
    assert result.exit_code == 2, (case.id, result.exit_code, result.stdout[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, (case.id, err)
    assert lines[0].startswith("lmxray: error: "), (case.id, err)
    assert "Traceback" not in result.output, (case.id, result.output)
    assert case.match in lines[0], (case.id, case.match, lines[0])
    _assert_no_outputs(case.id, [Path(_fmt(o, tmp)) for o in case.outputs])


def run_api_case(case: ApiCase, tmp: Path) -> None:
    import pytest

    with pytest.raises(case.exc) as info:
        case.call(tmp)
    assert isinstance(info.value, LmxrayError), (case.id, type(info.value))
    msg = str(info.value)
    assert msg and "\n" not in msg.strip(), (case.id, msg)
    assert case.match in msg, (case.id, case.match, msg)
    _assert_no_outputs(case.id, [Path(_fmt(o, tmp)) for o in case.outputs])


def _assert_no_outputs(case_id: str, paths: list[Path]) -> None:
    for path in paths:
        assert not (path.exists() and path.is_file()), (case_id, f"{path} was written")
        if path.parent.exists():
            left = [p.name for p in path.parent.glob(f".{path.name}*")]
            assert left == [], (case_id, left)
