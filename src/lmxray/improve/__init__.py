"""Improve models with explanations: shortcut detection, explanation-regularised fine-tuning
(RRR), steering vectors (CAA), ROME rank-one editing, MEMIT batch editing,
rationale distillation and AMPLIFY prompting.

See ``docs/improve.md``. Exports resolve lazily (PEP 562), so importing ``lmxray.improve`` (the
CLI does, to register its commands) does not import torch until a function is used::

    from lmxray.improve import detect_shortcuts, finetune, steering_vector, steer, rome_edit
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "Labelled": "._common",
    "as_labelled": "._common",
    "ShortcutReport": ".shortcuts",
    "detect_shortcuts": ".shortcuts",
    "FinetuneConfig": ".regularise",
    "FinetuneResult": ".regularise",
    "finetune": ".regularise",
    "SteeringVector": ".steering",
    "SteeringSweep": ".steering",
    "steering_vector": ".steering",
    "steer": ".steering",
    "steering_sweep": ".steering",
    "EditResult": ".results",
    "RankOneEdit": ".editing",
    "EditReport": ".editing",
    "key_covariance": ".editing",
    "rome_edit": ".editing",
    "locate_layer": ".editing",
    "evaluate_edits": ".editing",
    "AmplifyResult": ".prompting",
    "amplify_experiment": ".prompting",
    "RRRReport": ".experiments",
    "shortcut_demo": ".experiments",
    "rrr_demo": ".experiments",
    "steering_demo": ".experiments",
    "editing_demo": ".experiments",
    "amplify_demo": ".experiments",
    "EditRequest": ".memit",
    "MultiEdit": ".memit",
    "memit_edit": ".memit",
    "evaluate_memit": ".memit",
    "DistillReport": ".distill",
    "distill_curve": ".distill",
    "train_student": ".distill",
}

__all__ = [
    "AmplifyResult",
    "DistillReport",
    "EditReport",
    "EditRequest",
    "MultiEdit",
    "EditResult",
    "FinetuneConfig",
    "FinetuneResult",
    "Labelled",
    "RRRReport",
    "RankOneEdit",
    "ShortcutReport",
    "SteeringSweep",
    "SteeringVector",
    "amplify_demo",
    "amplify_experiment",
    "as_labelled",
    "detect_shortcuts",
    "distill_curve",
    "editing_demo",
    "evaluate_edits",
    "evaluate_memit",
    "finetune",
    "key_covariance",
    "locate_layer",
    "memit_edit",
    "rome_edit",
    "rrr_demo",
    "shortcut_demo",
    "steer",
    "steering_demo",
    "steering_sweep",
    "steering_vector",
    "train_student",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._common import Labelled, as_labelled
    from .distill import DistillReport, distill_curve, train_student
    from .editing import (
        EditReport,
        RankOneEdit,
        evaluate_edits,
        key_covariance,
        locate_layer,
        rome_edit,
    )
    from .experiments import (
        RRRReport,
        amplify_demo,
        editing_demo,
        rrr_demo,
        shortcut_demo,
        steering_demo,
    )
    from .memit import EditRequest, MultiEdit, evaluate_memit, memit_edit
    from .prompting import AmplifyResult, amplify_experiment
    from .regularise import FinetuneConfig, FinetuneResult, finetune
    from .results import EditResult
    from .shortcuts import ShortcutReport, detect_shortcuts
    from .steering import SteeringSweep, SteeringVector, steer, steering_sweep, steering_vector


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmxray.improve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
