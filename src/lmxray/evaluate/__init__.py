"""Judge explanations: faithfulness, plausibility, sanity checks, ground truth, and a resumable
benchmark runner with leaderboards.

>>> import lmxray
>>> from lmxray.evaluate import evaluate, faithfulness
>>> m = lmxray.load()                                                        # doctest: +SKIP
>>> a = m.attribute("The capital of France is", target=" Paris", method="occlusion")  # doctest: +SKIP
>>> faithfulness(m, a).summary()["comprehensiveness"]                        # doctest: +SKIP
>>> ev = lmxray.evaluate(m, lmxray.zoo.generate("facts", n=50), methods="all")  # doctest: +SKIP
>>> ev.show(); ev.to_dataframe()                                             # doctest: +SKIP

The package itself is callable: ``lmxray.evaluate(model, examples, ...)`` is
:func:`~lmxray.evaluate.runner.evaluate`, and ``lmxray.evaluate.faithfulness`` & co. stay reachable.
"""

import sys
import types

from .data import Example, load_examples
from .faithfulness import DEFAULT_BINS, FAITHFULNESS_METRICS, Faithfulness, faithfulness
from .groundtruth import GROUNDTRUTH_METRICS, evidence_recovery, verify_evidence
from .plausibility import PLAUSIBILITY_METRICS, plausibility, token_plausibility
from .report import Evaluation, Leaderboard
from .runner import METRIC_GROUPS, evaluate
from .sanity import SanityResult, sanity_check

__all__ = [
    "evaluate",
    "Evaluation",
    "Leaderboard",
    "Example",
    "load_examples",
    "faithfulness",
    "Faithfulness",
    "plausibility",
    "token_plausibility",
    "evidence_recovery",
    "verify_evidence",
    "sanity_check",
    "SanityResult",
    "METRIC_GROUPS",
    "FAITHFULNESS_METRICS",
    "PLAUSIBILITY_METRICS",
    "GROUNDTRUTH_METRICS",
    "DEFAULT_BINS",
]


class _CallableModule(types.ModuleType):
    """``lmxray.evaluate(...)`` runs the benchmark; attributes work as for any module."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
