"""The shared types of :mod:`lmxray.selfexplain` (the interface between generation, formats and tests).

- :class:`MCItem`: one multiple-choice question (options lettered (A), (B), ...).
- :class:`Bias`: a biasing feature added to a prompt (Turpin et al. 2023).
- :class:`Generation`: one greedy continuation.
- :class:`Generator`: a local model or a served one, asked for greedy continuations of many prompts.
- :class:`Format`: how a model is asked, and how its answers and explanations are read.

Rows (what every test returns; the runner writes them as JSONL / Parquet / DataFrame)::

    {"test": str, "id": str, "variant": str, "answer": int | None, "reference": int | None,
     "agree": bool | None, "parse_failed": bool, "explanation": str, ...test-specific fields}

Fields may be added to these types, never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["MCItem", "Bias", "Generation", "Generator", "Format"]


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question.

    ``options`` are the option texts, lettered (A), (B), ... in this order; ``answer`` is the index
    of the correct option; ``context`` an optional passage before the question; ``meta`` free
    annotations, e.g. ``{"evidence": "apple", "cue": 2}``.
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    context: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bias:
    """A biasing feature added to a prompt (Turpin et al.).

    ``kind``: ``"suggested"`` ("I think the answer is (X) but I'm curious to hear what you think."),
    ``"always_a"`` (few-shot answers reordered to (A)), or an organism's own cue kind, e.g.
    ``"marker"``. ``option``: the index of the option the bias points to.
    """

    kind: str
    option: int


@dataclass
class Generation:
    """One greedy continuation of ``prompt``.

    ``text`` is the continuation only (no prompt), special tokens stripped; ``n_tokens`` the number
    of generated tokens; ``stopped`` why it ended: ``"eos"`` | ``"length"`` | ``"stop"`` (a stop
    string was met; ``text`` ends before it); ``retries`` the requests repeated to get it
    (endpoints; 0 in process).
    """

    prompt: str
    text: str
    n_tokens: int
    stopped: str
    retries: int = 0


@runtime_checkable
class Generator(Protocol):
    """A model asked for greedy continuations: a local one batches all prompts of a call (left
    padding, KV cache); an endpoint one sends them (chat or completions) with retries."""

    name: str

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[Generation]:
        """Greedy continuations of ``prompts``, one :class:`Generation` each, in order."""
        ...

    def option_logprobs(self, prompts: Sequence[str], n_options: int) -> list[list[float]] | None:
        """Log-prob of each option letter "A", "B", ... as the next token after each prompt, or
        None when the backend cannot say (e.g. a chat endpoint without logprobs)."""
        ...


@runtime_checkable
class Format(Protocol):
    """How a model is asked, and how its answers and explanations are read."""

    name: str

    def cot_prompt(self, item: MCItem, bias: Bias | None = None) -> str:
        """Explain-then-answer: the model continues with its chain, then "The best answer is: (X)"."""
        ...

    def answer_prompt(self, item: MCItem, chain: str | None = None, bias: Bias | None = None) -> str:
        """The prompt ending right before the answer letter, after the given (possibly truncated,
        edited, paraphrased, filler) chain; ``chain=None``: no chain at all."""
        ...

    def posthoc_prompt(self, item: MCItem, answer: int, bias: Bias | None = None) -> str:
        """Answer-then-explain: the model continues with its rationale for ``answer``."""
        ...

    def parse_answer(self, text: str, n_options: int) -> int | None:
        """The option index a continuation answers, None when unparseable."""
        ...

    def split_chain(self, text: str) -> tuple[str, str]:
        """(chain, answer part) of a chain-of-thought output."""
        ...

    def sentences(self, chain: str) -> list[str]:
        """The chain's steps, for early answering."""
        ...

    def mentions(self, explanation: str, bias: Bias, item: MCItem) -> bool:
        """Whether the explanation mentions the bias (rule-based)."""
        ...

    def cited_words(self, explanation: str, item: MCItem) -> list[str]:
        """The input words the explanation names."""
        ...
