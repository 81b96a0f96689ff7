"""Dataset jobs, in process or on Ray: the evaluate runner, attribution over a dataset, and
facts-wide causal tracing (see docs/scale.md).

Each job cuts its rows into units and hands ``fn(model, unit)`` to an executor whose ``map``
yields results in order; the job streams them to its output file and resumes from it.
:class:`InProcess` (the default) runs on the model you loaded; :class:`RayExecutor` runs on Ray
actors, each with its own copy of the model (Ray is imported only when one is made)::

    from lmxray.jobs import ModelSpec, RayExecutor
    with RayExecutor(ModelSpec("lmxray-tiny"), workers=2) as ex:
        lmxray.evaluate.evaluate(m, examples, out="rows.jsonl", executor=ex)
"""

from __future__ import annotations

from .attribute import ROWS_FORMAT, AttributionRows, attribute_dataset, read_attributions, read_rows
from .cluster import RayExecutor, check_address, executor_for, ray_module
from .executor import Executor, InProcess, ModelSpec, run_units

__all__ = ["Executor", "InProcess", "ModelSpec", "RayExecutor", "run_units", "executor_for", "check_address",
           "ray_module", "attribute_dataset", "read_attributions", "read_rows", "AttributionRows",
           "ROWS_FORMAT"]
