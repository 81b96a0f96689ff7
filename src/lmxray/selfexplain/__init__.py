"""Self-explanations: test the explanations models write in words (issue 15).

Chain-of-thought and post-hoc rationales from a local model or an OpenAI-compatible endpoint,
checked by faithfulness tests (biasing features, chain interventions, counterfactual deletion,
agreement with attributions, counterfactual simulatability). See docs/selfexplain.md.

Example::

    import lmxray
    from lmxray import selfexplain as se

    report = se.run(lmxray.load(), "questions.jsonl", tests="bias,cot", out="rows.jsonl")
    report.show()                      # terminal table: each test's headline value, CI, verdict
    df = report.to_dataframe()         # one row per test, example and variant

    remote = se.EndpointGenerator("http://127.0.0.1:8000/v1", "my-model", api="chat")
    se.run(remote, "questions.jsonl", tests="bias,cot,simulatability")

The result types and statistics import eagerly; generation, data and the runner (which load
torch) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._types import Bias, Format, Generation, Generator, MCItem
from .report import REPORT_FORMAT, SelfExplainReport
from .stats import bootstrap_ci

__all__ = ["Bias", "Format", "Generation", "Generator", "MCItem", "SelfExplainReport",
           "REPORT_FORMAT", "bootstrap_ci", "run", "LocalGenerator", "EndpointGenerator",
           "load_items", "to_items", "parse_answer", "parse_letter"]

_LAZY = {
    "run": "runner", "LocalGenerator": "generate", "EndpointGenerator": "generate",
    "load_items": "data", "to_items": "data", "parse_answer": "parse", "parse_letter": "parse",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
