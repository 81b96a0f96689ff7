"""Exception hierarchy. Every error a user can cause is an ``LmxrayError`` whose message is one
line saying what is wrong and how to fix it; the CLI prints it and exits with code 2."""

from __future__ import annotations

__all__ = [
    "LmxrayError",
    "InputError",
    "ModelLoadError",
    "MethodError",
    "NumericalError",
    "FormatError",
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
