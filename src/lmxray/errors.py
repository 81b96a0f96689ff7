"""Exception hierarchy. Every error a user can cause is an ``LmxrayError`` whose message is one
line saying what is wrong and how to fix it; the CLI prints it and exits with code 2. Also the one
check of "names from a registry" (methods, metrics, tests) that every layer shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "LmxrayError",
    "InputError",
    "ModelLoadError",
    "MethodError",
    "NumericalError",
    "FormatError",
    "choose_names",
]


class LmxrayError(Exception):
    """Base class of every error lmxray raises on purpose."""


class InputError(LmxrayError, ValueError):
    """Bad user input: empty prompt, unknown method, too long a sequence, bad baseline..."""


class ModelLoadError(LmxrayError):
    """The model or tokenizer could not be loaded, or is not a causal language model."""


class MethodError(LmxrayError):
    """A method cannot run with the given model or parameters."""


class NumericalError(LmxrayError):
    """The model produced NaN/inf, or a numerical method failed to converge."""


class FormatError(LmxrayError, ValueError):
    """A saved result is malformed or of an unknown format version."""


def choose_names(spec: str | Sequence[str], known: Iterable[str], what: str) -> list[str]:
    """Names from a list, a comma-separated string or ``"all"``, in order and without repeats,
    each checked against ``known`` (``what`` names them in the one-line errors)."""
    known = list(known)
    names = (known if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]) \
        if isinstance(spec, str) else list(spec)
    chosen = list(dict.fromkeys(names))
    if not chosen:
        raise InputError(f"no {what} chosen; give {what} names or 'all'")
    for name in chosen:
        if name not in known:
            raise InputError(f"unknown {what} {name!r}; choose from: "
                             f"{', '.join(known) or 'none registered'} (or 'all')")
    return chosen
