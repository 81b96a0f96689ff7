"""Token attribution methods, one registry (see :mod:`lmxray.attribution.base`)."""

# importing the method modules registers the built-in methods (before any lookup: importing
# ``lmxray.attribution.base`` runs this package's ``__init__`` first)
from . import attention, gradient, perturbation, shapley, surrogate  # noqa: F401
from ._budget import ScoreRow
from ._engine import score_sequences
from ._prefix import count_forward_tokens, prefix_cache
from .api import attribute, eval_mode
from .base import (
    Context,
    MethodOutput,
    MethodSpec,
    Request,
    get_method,
    method_params,
    method_specs,
    methods,
    register_method,
)
from .gradient import resolve_baseline_ids

__all__ = [
    "attribute",
    "methods",
    "method_specs",
    "get_method",
    "register_method",
    "Request",
    "Context",
    "MethodOutput",
    "MethodSpec",
    "method_params",
    "ScoreRow",
    "score_sequences",
    "count_forward_tokens",
    "prefix_cache",
    "eval_mode",
    "resolve_baseline_ids",
]
