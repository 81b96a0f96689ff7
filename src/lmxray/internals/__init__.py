"""Looking inside a model: lens, patching, causal tracing, attribution patching, heads, probes.

Everything here runs on the native Hugging Face model through the one hook layer
(:mod:`lmxray.hooks`) at the named sites of :mod:`lmxray.sites`. Results are
:class:`lmxray.result.Result` subclasses (versioned JSON; the tuned lens is safetensors); their
views live in :mod:`lmxray.render.internals`. :mod:`lmxray.internals.data` turns task examples
(e.g. the zoo's) into facts, texts and prompt/target lists.

>>> from lmxray.internals import activation_patching, causal_trace, logit_lens  # doctest: +SKIP
"""

from __future__ import annotations

from .data import example_texts, fact_records, prompts_and_targets, subject_of
from .heads import (
    HeadScores,
    ablate_heads,
    head_ablation_effects,
    head_means,
    head_scores,
    random_heads_control,
    repeated_tokens,
    task_metric,
)
from .lens import LensResult, TunedLens, lens_kl, logit_lens, unembed
from .patching import (
    PatchingResult,
    activation_patching,
    attribution_patching,
    compare,
    make_metric,
)
from .probing import ProbeResult, control_labels, probe
from .tracing import (
    DEFAULT_WINDOW,
    TraceResult,
    TraceSummary,
    causal_trace,
    embedding_std,
    subject_positions,
    trace_facts,
)

__all__ = [
    "logit_lens", "TunedLens", "LensResult", "lens_kl", "unembed",
    "activation_patching", "attribution_patching", "compare", "make_metric", "PatchingResult",
    "causal_trace", "trace_facts", "TraceResult", "TraceSummary", "subject_positions", "embedding_std",
    "head_scores", "HeadScores", "repeated_tokens", "task_metric", "ablate_heads", "head_ablation_effects",
    "random_heads_control", "head_means",
    "probe", "ProbeResult", "control_labels", "DEFAULT_WINDOW",
    "fact_records", "subject_of", "example_texts", "prompts_and_targets",
]
