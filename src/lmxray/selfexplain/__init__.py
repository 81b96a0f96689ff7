"""Self-explanations: test the explanations models write in words (issue 15).

Chain-of-thought and post-hoc rationales from a local model or an OpenAI-compatible endpoint,
checked by faithfulness tests (biasing features, chain interventions, counterfactual deletion,
agreement with attributions, counterfactual simulatability). See docs/selfexplain.md.
"""

from ._types import Bias, Format, Generation, Generator, MCItem

__all__ = ["Bias", "Format", "Generation", "Generator", "MCItem"]
