"""Black-box explanation: perturbation methods on models known only by their log-probabilities.

- :class:`Scorer`: the protocol (``score(rows, ctx)``) that perturbation methods run on;
  :class:`LocalScorer` wraps a local :class:`~lmxray.model.Model`.
- :class:`LogprobScorer` / :func:`from_callable`: any ``fn([(prompt_ids, continuation_ids)])``
  returning per-token log-probs.
- :func:`connect` / :class:`OpenAICompletionsScorer`: a served model behind an OpenAI-compatible
  ``/v1/completions`` endpoint with ``echo`` + ``logprobs`` (vLLM, or :func:`serve`).
- :func:`serve`: serve a local model that way on 127.0.0.1 (stdlib ``http.server``).

Example:
    >>> import lmxray, lmxray.blackbox as bb
    >>> srv = bb.serve(lmxray.load())                                   # doctest: +SKIP
    >>> remote = bb.connect(srv.url, srv.model.tokenizer, model=srv.name)  # doctest: +SKIP
    >>> remote.attribute("k3=blue k7=red ; k7 =", target=" red", method="kernel_shap")  # doctest: +SKIP
"""

from .http import OpenAICompletionsScorer, connect
from .scorer import (
    BlackBoxModel,
    LocalScorer,
    LogprobFn,
    LogprobScorer,
    Scorer,
    blackbox_methods,
    from_callable,
)
from .server import CompletionServer, serve

__all__ = [
    "Scorer",
    "LocalScorer",
    "LogprobScorer",
    "LogprobFn",
    "BlackBoxModel",
    "from_callable",
    "blackbox_methods",
    "OpenAICompletionsScorer",
    "connect",
    "CompletionServer",
    "serve",
]
