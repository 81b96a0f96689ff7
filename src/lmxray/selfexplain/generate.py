"""Generators: greedy continuations from a local model or from an OpenAI-compatible endpoint.

- :class:`LocalGenerator` wraps an :class:`lmxray.Model`: all prompts of a call are generated
  together in left-padded batches with the KV cache (one prefill, then one token per step for
  every row), sized by :func:`lmxray.memory.rows_that_fit` and halved on out-of-memory. Outputs
  are the same as a loop of single :meth:`lmxray.Model.generate` calls (greedy, EOS ends a row).
- :class:`EndpointGenerator` sends each prompt to ``/v1/chat/completions`` (``api="chat"``: the
  prompt is the user message) or ``/v1/completions`` (``api="completions"``) at temperature 0,
  retrying with exponential back-off on connection errors, timeouts, 408/409/425/429 and 5xx
  answers; every retry is counted (``Generation.retries``, :attr:`EndpointGenerator.retries`).
  The API key is read from an environment variable (``api_key_env``) when the request is made;
  it is sent as a header and never stored in results, files or messages.

Chat templates are the prompt format's business (e.g. ``TurpinFormat(chat=model.chat)``): a
generator continues the text it is given.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..blackbox.http import HTTPFailure, post_json
from ..errors import InputError, MethodError
from ..memory import rows_that_fit, run_chunks
from ..model import Model
from ._types import Generation

__all__ = ["LocalGenerator", "EndpointGenerator", "LETTERS", "check_prompts", "cut_at_stop"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RETRY_STATUS = frozenset({408, 409, 425, 429})


def check_prompts(prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
    """The prompts as a list, after checking them and the generation options (InputError)."""
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, not one string; wrap it in a list")
    out = list(prompts)
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is a {type(p).__name__}, not a string")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(stop, str):
        raise InputError("stop must be a list of strings, not one string; wrap it in a list")
    if any(not isinstance(s, str) or not s for s in stop):
        raise InputError("stop strings must be non-empty strings")
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _check_n_options(n_options: int) -> None:
    if isinstance(n_options, bool) or not isinstance(n_options, int) or not 1 <= n_options <= 26:
        raise InputError(f"n_options must be an integer 1..26, got {n_options!r}")


# --------------------------------------------------------------------------- local
class LocalGenerator:
    """Greedy generation with a local :class:`lmxray.Model`, all prompts of a call batched.

    Args:
        model: the model (``lmxray.load(...)``).
        batch_size: rows per batch; default: as many as the memory budget allows (at most 256).
        memory_budget: bytes for one batch (default :func:`lmxray.memory.available_memory`).
        name: shown in results (default: the model's name).

    Attributes:
        model: the wrapped model (tests that need gradients or prefix sharing use it).
        info: diagnostics (``oom_backoff`` when a batch had to be halved).

    Example:
        >>> gen = LocalGenerator(lmxray.load())  # doctest: +SKIP
        >>> gen.generate(["The capital of France is"], max_new_tokens=5)[0].text  # doctest: +SKIP
    """

    def __init__(self, model: Model, *, batch_size: int | None = None,
                 memory_budget: int | None = None, name: str | None = None) -> None:
        if not isinstance(model, Model):
            raise InputError(f"LocalGenerator needs an lmxray Model (lmxray.load(...)), got "
                             f"{type(model).__name__}")
        self.model = model
        self.name = name or model.name
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.info: dict[str, Any] = {}
        self._letter_ids: dict[int, list[int]] = {}
        # transformers 5 renamed past_key_values to cache (argument and output field)
        params = inspect.signature(model.hf.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def __repr__(self) -> str:
        return f"LocalGenerator({self.name!r})"

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[Generation]:
        """Greedy continuations, one per prompt, in order (see the module docstring)."""
        prompts = check_prompts(prompts, max_new_tokens, stop)
        out = []
        for p, (ids, stopped) in zip(prompts, self.generate_ids(prompts, max_new_tokens=max_new_tokens,
                                                                 stop=stop), strict=True):
            text = self.model.tokenizer.decode(ids, skip_special_tokens=True)
            if stop:
                text, _ = cut_at_stop(text, stop)
            out.append(Generation(prompt=p, text=text, n_tokens=len(ids), stopped=stopped))
        return out

    def generate_ids(self, prompts: Sequence[str], *, max_new_tokens: int,
                     stop: Sequence[str] = ()) -> list[tuple[list[int], str]]:
        """``(new token ids, why it stopped)`` per prompt (EOS not included), in order."""
        prompts = check_prompts(prompts, max_new_tokens, stop)
        if not prompts:
            return []
        seqs = [self.model.encode(p) for p in prompts]
        for i, s in enumerate(seqs):
            if not s:
                raise InputError(f"prompt {i} has no tokens; give a non-empty prompt")
            self.model.check_length(len(s) + max_new_tokens)
        # longest first: rows of a batch have similar lengths (little padding), and the first
        # batch is the largest, so an out-of-memory back-off happens early
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        rows = rows_that_fit(self._row_bytes(max(map(len, seqs)), max_new_tokens),
                             device=self.model.devices, memory_budget=self.memory_budget,
                             batch_size=self.batch_size)
        done = run_chunks(order, rows, lambda idx: self._greedy([seqs[i] for i in idx],
                                                                 max_new_tokens, stop), self.info)
        out: list[tuple[list[int], str]] = [([], "")] * len(prompts)
        for i, res in zip(order, done, strict=True):
            out[i] = res
        return out

    def _row_bytes(self, length: int, new: int) -> float:
        m = self.model
        width = 4 if m.dtype == torch.float32 else 2
        cache = 2 * m.n_layers * m.d_model * (length + new)
        prefill = 8 * m.d_model * length + 2 * m.vocab_size
        return float(width * (cache + prefill) * 2)

    @torch.no_grad()
    def _greedy(self, seqs: list[list[int]], max_new: int,
                stop: Sequence[str]) -> list[tuple[list[int], str]]:
        """Greedy decoding of one left-padded batch with the KV cache: (new ids, why it stopped)."""
        m = self.model
        ids, mask, pos = m.pad_batch(seqs)
        out = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                        logits_to_keep=1)
        gen: list[list[int]] = [[] for _ in seqs]
        stopped = ["length"] * len(seqs)
        live = set(range(len(seqs)))
        eos = m.eos_token_id
        for step in range(max_new):
            nxt = out.logits[:, -1].argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if i not in live:
                    continue
                if eos is not None and t == eos:
                    stopped[i] = "eos"
                    live.discard(i)
                    continue
                gen[i].append(int(t))
                if stop and cut_at_stop(m.tokenizer.decode(gen[i], skip_special_tokens=True), stop)[1]:
                    stopped[i] = "stop"
                    live.discard(i)
            if not live or step == max_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones((len(seqs), 1))], dim=1)
            pos = pos[:, -1:] + 1
            past = getattr(out, self._cache_kw)
            out = m.forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                            use_cache=True, **{self._cache_kw: past})
        return list(zip(gen, stopped, strict=True))

    # ------------------------------------------------------------------ option scores
    def letter_ids(self, n_options: int) -> list[int]:
        """The token id of each option letter "A", "B", ... as a continuation (no space)."""
        _check_n_options(n_options)
        if n_options not in self._letter_ids:
            ids = [self.model.encode_target(c) for c in LETTERS[:n_options]]
            if any(len(t) != 1 for t in ids) or len({t[0] for t in ids}) != n_options:
                raise MethodError(
                    f"the tokenizer of {self.model.name!r} does not encode the option letters "
                    "as single distinct tokens; score answers from generated text instead"
                )
            self._letter_ids[n_options] = [t[0] for t in ids]
        return self._letter_ids[n_options]

    @torch.no_grad()
    def option_logprobs(self, prompts: Sequence[str], n_options: int) -> list[list[float]]:
        """Log-prob of each option letter as the next token after each prompt (batched)."""
        prompts = check_prompts(prompts, 1, ())
        letters = self.letter_ids(n_options)
        if not prompts:
            return []
        seqs = [self.model.encode(p) for p in prompts]
        for s in seqs:
            self.model.check_length(len(s))
        rows = rows_that_fit(self._row_bytes(max(map(len, seqs)), 0), device=self.model.devices,
                             memory_budget=self.memory_budget, batch_size=self.batch_size)

        def score(idx: Sequence[int]) -> list[list[float]]:
            ids, mask, pos = self.model.pad_batch([seqs[i] for i in idx])
            logits = self.model.forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                                        logits_to_keep=1).logits[:, -1].float()
            lp = torch.log_softmax(logits, dim=-1)[:, letters]
            return [[float(v) for v in row] for row in lp.tolist()]

        return run_chunks(list(range(len(seqs))), rows, score, self.info)


# --------------------------------------------------------------------------- endpoint
def _base_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InputError("the endpoint URL is empty; give e.g. http://127.0.0.1:8000/v1")
    parsed = urllib.parse.urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"endpoint URL must be http(s)://host[:port]/v1, got {url!r}")
    path = parsed.path.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    return urllib.parse.urlunparse(parsed._replace(path=path or "/v1", query="", fragment=""))


class _Retryable(Exception):
    """A failure worth another try (the message says what happened)."""


class EndpointGenerator:
    """Greedy generation through an OpenAI-compatible endpoint (vLLM, a hosted API, or
    ``lmxray serve-completions``).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (a ``.../completions`` URL is accepted too).
        model_name: the ``model`` field of requests (the served model's name); None: not sent.
        api: ``"chat"`` (``/v1/chat/completions``; each prompt is one user message) or
            ``"completions"`` (``/v1/completions``; the prompt is sent as text).
        api_key_env: environment variable holding the API key (sent as ``Authorization: Bearer``
            when set; read at each request, never stored).
        retries: further tries after a failed request (connection error, timeout, 408, 409, 425,
            429, 5xx); other HTTP errors fail at once.
        backoff: seconds before the first retry, doubled each time (at most 30 s).
        timeout: seconds per request.
        concurrency: requests in flight at once.
        sleep: the waiting function (tests pass a fake).

    Attributes:
        retries_total: retries made so far by this generator (all calls).

    ``Generation.n_tokens`` is the server's ``usage.completion_tokens`` (-1 when it gives none);
    ``stopped`` is ``"length"``, ``"stop"`` (a stop string: cut here too, or the server's
    ``stop_reason``) or ``"eos"``.
    """

    def __init__(self, base_url: str, model_name: str | None = None, *, api: str = "chat",
                 api_key_env: str | None = "OPENAI_API_KEY", retries: int = 3,
                 backoff: float = 0.5, timeout: float = 60.0, concurrency: int = 1,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        if api not in ("chat", "completions"):
            raise InputError(f"api must be 'chat' or 'completions', got {api!r}")
        for name, value, low in (("retries", retries, 0), ("concurrency", concurrency, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, num in (("backoff", backoff), ("timeout", timeout)):
            if isinstance(num, bool) or not isinstance(num, int | float) or not num >= 0:
                raise InputError(f"{name} must be a number of seconds >= 0, got {num!r}")
        if not timeout > 0:
            raise InputError("timeout must be more than 0 seconds")
        self.base_url = _base_url(base_url)
        self.api = api
        self.url = self.base_url + ("/chat/completions" if api == "chat" else "/completions")
        self.model_name = model_name
        self.name = model_name or self.base_url
        self.api_key_env = api_key_env
        self.retries = retries
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.concurrency = concurrency
        self.retries_total = 0
        self._sleep = sleep
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EndpointGenerator({self.url!r}, model={self.model_name!r}, api={self.api!r})"

    def config(self) -> dict[str, Any]:
        """What identifies this generator in results (the key's variable name, never the key)."""
        return {"endpoint": self.base_url, "api": self.api, "model": self.model_name,
                "api_key_env": self.api_key_env, "retries": self.retries}

    # ------------------------------------------------------------------ transport
    def _once(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        try:
            out = post_json(url, body, api_key=key, timeout=self.timeout, detail_limit=200)
        except HTTPFailure as exc:
            if exc.status is None:  # unreachable, timed out, or not JSON: worth another try
                raise _Retryable(str(exc)[:200]) from None
            if exc.status in RETRY_STATUS or exc.status >= 500:
                raise _Retryable(f"answered {exc.status}: {exc}") from None
            raise MethodError(f"the endpoint {url} answered {exc.status}: {exc}") from None
        if not isinstance(out, dict) or not isinstance(out.get("choices"), list) or not out["choices"]:
            raise MethodError(f"the endpoint {url} answered without 'choices'; is it an "
                              "OpenAI-compatible server?")
        return out

    def post(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST ``body`` with retries and back-off: ``(answer, retries used)``; after the last
        retry, one :class:`MethodError` line naming the URL and the last failure."""
        if self.model_name is not None:
            body = {"model": self.model_name, **body}
        used = 0
        while True:
            try:
                return self._once(url, body), used
            except _Retryable as exc:
                if used >= self.retries:
                    raise MethodError(
                        f"no answer from the endpoint {url} after {used} "
                        f"{'retry' if used == 1 else 'retries'} ({exc}); is the server running "
                        "and the URL right?"
                    ) from None
                self._sleep(min(30.0, self.backoff * 2 ** used))
                used += 1
                with self._lock:
                    self.retries_total += 1

    def _map(self, fn: Callable[[str], Any], prompts: list[str]) -> list[Any]:
        if self.concurrency == 1 or len(prompts) < 2:
            return [fn(p) for p in prompts]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, prompts))

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[Generation]:
        """Greedy continuations (temperature 0), one request per prompt."""
        prompts = check_prompts(prompts, max_new_tokens, stop)
        stops = list(stop)

        def one(prompt: str) -> Generation:
            body: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": 0}
            if stops:
                body["stop"] = stops
            if self.api == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            out, used = self.post(self.url, body)
            return self._generation(prompt, out, stops, used)

        return self._map(one, prompts)

    def _generation(self, prompt: str, out: dict[str, Any], stop: list[str], used: int) -> Generation:
        choice = out["choices"][0]
        if self.api == "chat":
            text = (choice.get("message") or {}).get("content")
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise MethodError(f"the endpoint {self.url} answered a choice without text")
        text, cut = cut_at_stop(text, stop) if stop else (text, False)
        finish = choice.get("finish_reason")
        reason = choice.get("stop_reason")
        stopped = ("length" if finish == "length" and not cut
                   else "stop" if cut or isinstance(reason, str) else "eos")
        usage = out.get("usage") or {}
        n = usage.get("completion_tokens")
        return Generation(prompt=prompt, text=text, n_tokens=int(n) if isinstance(n, int) else -1,
                          stopped=stopped, retries=used)

    def option_logprobs(self, prompts: Sequence[str], n_options: int) -> list[list[float]] | None:
        """Log-probs of the option letters as the next token after each prompt, or None when
        the endpoint cannot say (the chat API; a letter merged into the prompt's last token).

        Completions API: one request per prompt scores the prompt and the prompt followed by each
        letter with ``echo`` and ``logprobs`` (the letter's own log-prob, as in process); a server
        that refuses ``echo`` is asked for the top-5 log-probs of one generated token instead
        (a letter outside them gets ``-inf``)."""
        _check_n_options(n_options)
        prompts = check_prompts(prompts, 1, ())
        if self.api == "chat":
            return None
        rows = self._map(lambda p: self._echo_letters(p, n_options), prompts)
        return None if any(r is None for r in rows) else rows

    def _echo_letters(self, prompt: str, n_options: int) -> list[float] | None:
        texts = [prompt] + [prompt + c for c in LETTERS[:n_options]]
        body = {"prompt": texts, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0}
        try:
            out, _ = self.post(self.url, body)
        except MethodError as exc:
            if " answered 4" not in str(exc):
                raise
            return self._top_letters(prompt, n_options)
        choices = sorted(out["choices"], key=lambda c: c.get("index", 0))
        lps = [c.get("logprobs") or {} for c in choices]
        if len(choices) != len(texts) or not all(lp.get("tokens") for lp in lps):
            return None
        # the prompt's tokens: what was echoed, less the one token generated after it (none
        # when the model stopped at once)
        n = len(lps[0]["tokens"]) - (1 if choices[0].get("finish_reason") == "length" else 0)
        row = []
        for c, lp in zip(LETTERS, lps[1:], strict=False):
            toks, vals = lp["tokens"], lp.get("token_logprobs") or []
            if (len(toks) <= n or toks[:n] != lps[0]["tokens"][:n] or str(toks[n]).strip() != c
                    or len(vals) <= n or not isinstance(vals[n], int | float)):
                return None  # the letter merged with the prompt's end: no clean answer here
            row.append(float(vals[n]))
        return row

    def _top_letters(self, prompt: str, n_options: int) -> list[float] | None:
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5}
        out, _ = self.post(self.url, body)
        lp = out["choices"][0].get("logprobs") or {}
        top = (lp.get("top_logprobs") or [None])[0]
        if not isinstance(top, dict):
            return None
        row = [float("-inf")] * n_options
        for tok, v in top.items():
            k = LETTERS.find(str(tok).strip()) if len(str(tok).strip()) == 1 else -1
            if 0 <= k < n_options and isinstance(v, int | float):
                row[k] = max(row[k], float(v))
        return row
