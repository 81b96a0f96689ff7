"""A scorer for served models: an OpenAI-compatible ``/v1/completions`` endpoint.

The legacy completions API scores a prompt when asked to echo it with log-probabilities::

    POST {base}/completions
    {"model": NAME, "prompt": [[ids...], ...], "echo": true, "logprobs": 1,
     "max_tokens": 1, "temperature": 0}
    -> choices[i].logprobs.token_logprobs = [null, logp(t1 | t0), logp(t2 | t0 t1), ...]

(``max_tokens=1`` because several servers, vLLM among them, refuse 0; the generated token is
ignored.) Prompts are sent as token ids, so the server must use the tokenizer you give
:func:`connect`. vLLM serves this endpoint (``vllm serve MODEL``); disable its prefix caching if
prompt log-probs come back empty. :mod:`lmxray.blackbox.server` serves a local model the same way.

Only the standard library is used (``urllib``); requests go where the URL says and nowhere else.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import InputError, MethodError
from .scorer import BlackBoxModel, LogprobScorer

__all__ = ["OpenAICompletionsScorer", "connect", "error_detail", "post_json", "HTTPFailure"]


def _completions_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"endpoint URL must be http(s)://host[:port]/..., got {url!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/completions"):
        path = (path or "/v1") + "/completions"
    return urllib.parse.urlunparse(parsed._replace(path=path))


class OpenAICompletionsScorer(LogprobScorer):
    """Log-probs of ``(prompt, continuation)`` token-id pairs from a completions endpoint.

    Args:
        url: the server's base (``http://127.0.0.1:8000/v1``) or its ``/v1/completions`` URL.
        model: the ``model`` field of each request (the served model's name).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        batch_size: prompts per request.
        concurrency: requests in flight at once.
        timeout: seconds per request.
        max_tokens: tokens the server generates per scoring request (ignored; 0 where allowed).
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        batch_size: int = 32,
        concurrency: int = 1,
        timeout: float = 120.0,
        max_tokens: int = 1,
    ) -> None:
        super().__init__(self._score_pairs, batch_size=batch_size)
        self.url = _completions_url(url)
        self.model = model
        self.api_key = api_key
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InputError(f"concurrency must be a positive integer, got {concurrency!r}")
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)

    # ------------------------------------------------------------------ transport
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.model is not None:
            body = {"model": self.model, **body}
        try:
            out = post_json(self.url, body, api_key=self.api_key, timeout=self.timeout)
        except HTTPFailure as exc:
            if exc.status is not None:
                raise MethodError(f"the scoring server at {self.url} answered {exc.status}: {exc}") from None
            if exc.reached:
                raise MethodError(f"the scoring server at {self.url} did not answer JSON") from None
            raise MethodError(
                f"cannot reach the scoring server at {self.url} ({exc}); is it running?"
            ) from None
        if not isinstance(out, dict) or not isinstance(out.get("choices"), list):
            raise MethodError(f"the scoring server at {self.url} answered without 'choices'")
        return out

    def _request(self, chunk: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        prompts = [p + c for p, c in chunk]
        out = self._post({
            "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": self.max_tokens,
            "temperature": 0.0,
        })
        choices = sorted(out["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise MethodError(
                f"the scoring server returned {len(choices)} choices for {len(prompts)} prompts"
            )
        res = []
        for (p, c), ch in zip(chunk, choices, strict=True):
            lp = ((ch.get("logprobs") or {}).get("token_logprobs")) or []
            part = lp[len(p): len(p) + len(c)]
            if len(part) != len(c) or any(x is None for x in part):
                raise MethodError(
                    "the scoring server did not echo prompt log-probs (needs echo=true with "
                    "logprobs on /v1/completions; on vLLM disable prefix caching)"
                )
            res.append(np.asarray(part, dtype=np.float64))
        return res

    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        return self._request(pairs)

    def logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        if self.concurrency == 1 or len(pairs) <= self.batch_size:
            return super().logprobs(pairs)
        chunks = [pairs[a:a + self.batch_size] for a in range(0, len(pairs), self.batch_size)]
        base = super()
        with ThreadPoolExecutor(self.concurrency) as pool:
            parts = list(pool.map(base.logprobs, chunks))
        return [x for part in parts for x in part]

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        """Greedy continuation text (``temperature=0``)."""
        out = self._post({
            "prompt": [list(prompt_ids)], "max_tokens": int(max_new_tokens), "temperature": 0.0,
        })
        if not out["choices"]:
            raise MethodError("the scoring server returned no completion")
        return str(out["choices"][0].get("text") or "")


class HTTPFailure(Exception):
    """A POST that brought no JSON answer. ``status``: the HTTP error code (message: the error
    body's gist), or None; ``reached``: the server answered (then: not JSON), else the message
    is why it could not be reached."""

    def __init__(self, message: str, status: int | None = None, reached: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reached = reached


def post_json(url: str, body: Any, *, api_key: str | None = None, timeout: float,
              detail_limit: int = 300) -> Any:
    """POST ``body`` as JSON to ``url`` (``Authorization: Bearer`` when ``api_key``) and parse
    the JSON answer; every failure is one :class:`HTTPFailure` (the one HTTP transport of lmxray's
    clients of OpenAI-compatible servers: the black-box scorer, the self-explanation endpoint)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user URL
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise HTTPFailure(error_detail(exc.read(), detail_limit), status=exc.code) from None
    except OSError as exc:  # URLError, TimeoutError, ConnectionError: no answer at all
        reason = getattr(exc, "reason", None) or exc
        raise HTTPFailure(" ".join(str(reason).split()) or type(exc).__name__) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise HTTPFailure("answered something that is not JSON", reached=True) from None


def error_detail(raw: bytes, limit: int = 300) -> str:
    """The one-line gist of an HTTP error body: an OpenAI-style ``error.message``, else the
    body's text, whitespace collapsed, at most ``limit`` characters (shared by every client of
    an OpenAI-compatible server in lmxray)."""
    try:
        body = json.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = raw.decode("utf-8", errors="replace")
    return " ".join(str(msg).split())[:limit]


def connect(
    url: str, tokenizer: Any, *, model: str | None = None, name: str | None = None,
    api_key: str | None = None, batch_size: int = 32, concurrency: int = 1, timeout: float = 120.0,
    max_length: int | None = None,
) -> BlackBoxModel:
    """A :class:`~lmxray.blackbox.scorer.BlackBoxModel` served by an OpenAI-compatible endpoint.

    Args:
        url: e.g. ``"http://127.0.0.1:8000/v1"``.
        tokenizer: the served model's tokenizer (object, hub id or folder).
        model: the served model's name (the ``model`` field of requests).

    Example:
        >>> bb = connect("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-0.5B",
        ...              model="Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
        >>> bb.attribute("2 + 2 =", target=" 4", method="shapley_sampling")  # doctest: +SKIP
    """
    scorer = OpenAICompletionsScorer(
        url, model, api_key=api_key, batch_size=batch_size, concurrency=concurrency,
        timeout=timeout,
    )
    return BlackBoxModel(scorer, tokenizer, name=name or model or scorer.url, max_length=max_length)
