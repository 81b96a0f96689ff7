"""Scorers: where the log-probabilities of perturbed inputs come from.

Perturbation methods (occlusion, shapley_sampling, kernel_shap, lime) need nothing from a model
but the target function of many teacher-forced sequences. :class:`Scorer` is that need as a
protocol: ``score(rows, ctx) -> list[np.ndarray]``, one value per target step of each
:class:`~lmxray.attribution._engine.ScoreRow`. A local :class:`~lmxray.model.Model` satisfies it
through :class:`LocalScorer` (the batched engine with prefix KV-cache reuse); anything that
returns per-token log-probabilities for ``(prompt ids, continuation ids)`` pairs satisfies it
through :class:`LogprobScorer`: a served model (an OpenAI-compatible ``/v1/completions``
endpoint with ``echo`` and ``logprobs``, vLLM, see :mod:`lmxray.blackbox.http`), a quantised
model, or any Python callable.

:class:`BlackBoxModel` pairs a scorer with the tokenizer that produced its token ids, and runs
the registered perturbation methods on it exactly as on a local model::

    bb = lmxray.blackbox.connect("http://127.0.0.1:8000/v1", tokenizer="path/or/hub-id")
    a = bb.attribute("The capital of France is", target=" Paris", method="kernel_shap")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..attribution import Context, ScoreRow, attribute, get_method, method_specs, score_sequences
from ..errors import InputError, MethodError
from ..model import Model, load_tokenizer
from ..targets import logprob, prob

if TYPE_CHECKING:  # pragma: no cover
    from ..result import Attribution

__all__ = [
    "Scorer", "LocalScorer", "LogprobScorer", "LogprobFn", "BlackBoxModel", "from_callable",
    "blackbox_methods",
]

#: ``fn([(prompt_ids, continuation_ids), ...]) -> [[logp of each continuation token], ...]``
LogprobFn = Callable[[list[tuple[list[int], list[int]]]], Sequence[Sequence[float]]]

BLACKBOX_KINDS = ("perturbation", "control")


def blackbox_methods() -> list[str]:
    """Registered methods that run on a black-box model (they only need log-probabilities)."""
    return [n for n, s in method_specs().items() if s.kind in BLACKBOX_KINDS]


@runtime_checkable
class Scorer(Protocol):
    """Anything that gives target-function values for teacher-forced rows."""

    def score(self, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
        """``[len(row.targets)]`` float32 values for each row, in order."""
        ...


class LocalScorer:
    """A local :class:`~lmxray.model.Model` as a :class:`Scorer` (batched, prefix-cached)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def score(self, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
        return score_sequences(self.model, rows, ctx)


def _split(row: ScoreRow) -> int:
    """Length of the prefix whose last token predicts the first target."""
    return len(row.input_ids) - len(row.targets) + 1


class LogprobScorer:
    """A :class:`Scorer` from a function of ``(prompt ids, continuation ids)`` pairs.

    Args:
        fn: returns, for each pair, the log-probability of every continuation token given the
            prompt and the continuation before it (what ``echo=True, logprobs=...`` gives).
        batch_size: pairs per call of ``fn``.

    A row whose inputs are teacher forced (its last positions hold the targets before the last)
    becomes one pair; other rows and foils (contrastive targets) become one pair per step. Only the
    ``logprob`` and ``prob`` target functions can be computed from log-probabilities.
    """

    def __init__(self, fn: LogprobFn, *, batch_size: int = 64) -> None:
        if not callable(fn):
            raise InputError("LogprobScorer needs a callable fn(pairs) -> log-probs")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.fn = fn
        self.batch_size = batch_size
        self.calls = 0
        self.pairs_sent = 0

    def logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Continuation log-probs of each pair (``fn`` in batches, checked)."""
        out: list[np.ndarray] = []
        for a in range(0, len(pairs), self.batch_size):
            chunk = pairs[a:a + self.batch_size]
            got = self.fn(chunk)
            self.calls += 1
            self.pairs_sent += len(chunk)
            if got is None or len(got) != len(chunk):
                raise MethodError(
                    f"the scorer returned {0 if got is None else len(got)} results for "
                    f"{len(chunk)} (prompt, continuation) pairs; it must return one per pair"
                )
            for (_, cont), lp in zip(chunk, got, strict=True):
                arr = np.asarray(lp, dtype=np.float64).reshape(-1)
                if len(arr) != len(cont):
                    raise MethodError(
                        f"the scorer returned {len(arr)} log-probs for a {len(cont)}-token "
                        "continuation; it must return one per continuation token"
                    )
                if not np.isfinite(arr).all() or (arr > 1e-6).any():
                    raise MethodError("the scorer returned log-probs that are not finite and <= 0")
                out.append(arr)
        return out

    def score(self, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
        fn = ctx.target_fn
        if fn is not logprob and fn is not prob:
            raise MethodError(
                "a black-box scorer gives log-probabilities only: use target_fn='logprob' or "
                "'prob' (logits and custom target functions need the local model)"
            )
        keys: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        pairs: list[tuple[list[int], list[int]]] = []

        def pair(prefix: Sequence[int], cont: Sequence[int]) -> int:
            key = (tuple(prefix), tuple(cont))
            if key not in keys:
                keys[key] = len(pairs)
                pairs.append((list(prefix), list(cont)))
            return keys[key]

        plans: list[list[tuple[int, int, int, float]]] = []  # (pair, offset, step, sign)
        for row in rows:
            ids, tg, n = list(row.input_ids), list(row.targets), len(row.targets)
            if n > len(ids):
                raise MethodError("a row has more targets than input positions")
            split = _split(row)
            plan: list[tuple[int, int, int, float]] = []
            if n and ids[split:] == tg[:-1]:  # teacher forced: one pair holds every step
                p = pair(ids[:split], tg)
                plan += [(p, k, k, 1.0) for k in range(n)]
            else:
                plan += [(pair(ids[:split + k], [tg[k]]), 0, k, 1.0) for k in range(n)]
            if row.foils is not None:
                plan += [(pair(ids[:split + k], [row.foils[k]]), 0, k, -1.0) for k in range(n)]
            plans.append(plan)
        lps = self.logprobs(pairs)
        out = []
        for row, plan in zip(rows, plans, strict=True):
            n = len(row.targets)
            v = np.zeros(n)
            for p, off, k, sign in plan:
                x = lps[p][off]
                v[k] += sign * (np.exp(x) if fn is prob else x)
            out.append(v.astype(np.float32))
        return out


class _NeedsWeights(MethodError, AttributeError):
    """Raised when a method reaches for model internals a black-box model does not have."""


class _NoWeights:
    training = False

    def __getattr__(self, name: str) -> Any:
        raise _NeedsWeights(_weights_message())


def _weights_message() -> str:
    return (
        "this method needs the model's weights (gradients or internals); a black-box model "
        f"supports only: {', '.join(blackbox_methods())}"
    )


class BlackBoxModel:
    """A model known only through a :class:`Scorer`, explained with perturbation methods.

    Args:
        scorer: a :class:`Scorer` (e.g. :class:`~lmxray.blackbox.http.OpenAICompletionsScorer`).
        tokenizer: the tokenizer whose ids the scorer understands (an HF tokenizer object, or a
            hub id / folder loaded with ``AutoTokenizer``).
        name: shown in results.
        max_length: the context length, when known (longer inputs are refused).

    Example:
        >>> bb = BlackBoxModel(LogprobScorer(my_fn), tokenizer=tok, name="my-api")  # doctest: +SKIP
        >>> bb.attribute("Hello", target=" world", method="shapley_sampling")  # doctest: +SKIP
    """

    # tokenisation is the local Model's, so results match a local model token for token
    encode = Model.encode
    encode_target = Model.encode_target
    token_strings = Model.token_strings
    chat = Model.chat
    _template_adds_bos = Model._template_adds_bos
    check_length = Model.check_length
    pad_token_id = Model.pad_token_id
    eos_token_id = Model.eos_token_id

    def __init__(
        self, scorer: Any, tokenizer: Any, *, name: str = "blackbox", max_length: int | None = None
    ) -> None:
        if not isinstance(scorer, Scorer):
            raise InputError("scorer must have a score(rows, ctx) method (see lmxray.blackbox.Scorer)")
        if isinstance(tokenizer, str):  # hub id, folder or embedded model name (lmxray-tiny)
            tokenizer = load_tokenizer(tokenizer)
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.hf = _NoWeights()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _NeedsWeights(_weights_message())

    def __repr__(self) -> str:
        return f"BlackBoxModel({self.name!r}, scorer={type(self.scorer).__name__})"

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def score(self, rows: Sequence[ScoreRow], ctx: Context) -> list[np.ndarray]:
        return self.scorer.score(rows, ctx)

    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation ids through the scorer (when it can generate)."""
        gen = getattr(self.scorer, "generate", None)
        if gen is None:
            raise MethodError(
                "this black-box scorer cannot generate; pass target= with the text to explain"
            )
        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        text = gen(list(prompt_ids), int(max_new_tokens))
        ids = self.encode_target(text) if text else []
        eos = self.eos_token_id
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return ids[:max_new_tokens]

    def attribute(
        self,
        prompt: str | Sequence[str],
        target: str | Sequence[str] | None = None,
        *,
        method: str = "kernel_shap",
        **kwargs: Any,
    ) -> Attribution | list[Attribution]:
        """Attribute with a perturbation method. See :func:`lmxray.attribution.attribute`."""
        spec = get_method(method)
        if spec.kind not in BLACKBOX_KINDS:
            raise MethodError(
                f"method {method!r} needs the model's weights; a black-box model supports: "
                f"{', '.join(blackbox_methods())}"
            )
        return attribute(self, prompt, target, method=method, **kwargs)  # type: ignore[arg-type]


def from_callable(
    fn: LogprobFn, tokenizer: Any, *, name: str = "callable", batch_size: int = 64,
    max_length: int | None = None,
) -> BlackBoxModel:
    """A :class:`BlackBoxModel` from ``fn([(prompt_ids, continuation_ids), ...]) -> log-probs``."""
    return BlackBoxModel(
        LogprobScorer(fn, batch_size=batch_size), tokenizer, name=name, max_length=max_length
    )
