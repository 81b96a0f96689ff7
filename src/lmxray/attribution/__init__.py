"""Token attribution methods, one registry (see :mod:`lmxray.attribution.base`)."""

from .api import attribute
from .base import Context, MethodOutput, Request, get_method, method_specs, methods, register_method

__all__ = [
    "attribute",
    "methods",
    "method_specs",
    "get_method",
    "register_method",
    "Request",
    "Context",
    "MethodOutput",
]
