"""Judge explanations: faithfulness, plausibility, sanity checks, ground truth, benchmark runner."""

from .faithfulness import DEFAULT_BINS, FAITHFULNESS_METRICS, Faithfulness, faithfulness

__all__ = ["faithfulness", "Faithfulness", "FAITHFULNESS_METRICS", "DEFAULT_BINS"]
