"""lmxray: explain large language models, judge the explanations, improve models with them.

>>> import lmxray
>>> m = lmxray.load()                                   # doctest: +SKIP
>>> a = m.attribute("The capital of France is", target=" Paris")  # doctest: +SKIP
>>> a.show()                                            # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .attribution import methods, register_method
from .errors import (
    FormatError,
    InputError,
    LmxrayError,
    MethodError,
    ModelLoadError,
    NumericalError,
)
from .model import Model, load
from .result import Attribution
from .targets import TARGET_FUNCTIONS

__all__ = [
    "__version__",
    "load",
    "Model",
    "Attribution",
    "methods",
    "register_method",
    "TARGET_FUNCTIONS",
    "LmxrayError",
    "InputError",
    "ModelLoadError",
    "MethodError",
    "NumericalError",
    "FormatError",
]
