"""lmxray: explain large language models, judge the explanations, improve models with them.

>>> import lmxray
>>> m = lmxray.load()                                   # doctest: +SKIP
>>> a = m.attribute("The capital of France is", target=" Paris")  # doctest: +SKIP
>>> a.show()                                            # doctest: +SKIP

Exports are resolved lazily (PEP 562), so ``import lmxray`` and ``lmxray --help`` do not pay for
importing torch and transformers until a model or method is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__
from .errors import *  # noqa: F403  (the exception classes: errors.__all__)

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "load": "lmxray.model",
    "Model": "lmxray.model",
    "Attribution": "lmxray.result",
    "methods": "lmxray.attribution.base",
    "register_method": "lmxray.attribution.base",
    "TARGET_FUNCTIONS": "lmxray.targets",
}

# subpackages reachable as attributes (``lmxray.zoo.generate(...)``, ``lmxray.evaluate(m, ...)``)
_SUBPACKAGES = ("zoo", "evaluate", "internals", "improve", "hooks", "blackbox")

__all__ = [
    "__version__",
    *_SUBPACKAGES,
    "load",
    "Model",
    "Attribution",
    "methods",
    "register_method",
    "TARGET_FUNCTIONS",
    *errors.__all__,
]

if TYPE_CHECKING:  # pragma: no cover
    from .attribution.base import methods, register_method
    from .model import Model, load
    from .result import Attribution
    from .targets import TARGET_FUNCTIONS


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"lmxray.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmxray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
