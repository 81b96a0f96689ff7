"""Serve a local model as an OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions``
endpoint (stdlib only).

For testing black-box explanations against a real HTTP server, and for putting a local model
behind the same interface a vLLM server offers. It implements what scoring and self-explanation
tests need:

- ``POST /v1/completions`` with ``prompt`` as a string, a list of token ids, or a list of either;
  ``echo`` (prompt tokens and their log-probs first), ``logprobs`` (0-5 alternatives per token),
  ``max_tokens`` (greedy decoding; ``temperature`` must be 0 or absent), ``stop`` (a string or up
  to 4; the text ends before the first one met) and ``model``.
- ``POST /v1/chat/completions`` with ``messages`` (``system``/``user``/``assistant`` turns, string
  contents): the prompt is the tokenizer's chat template with the generation prompt (a last
  ``assistant`` turn is a prefill the answer continues), or, without a template, the contents
  joined by blank lines; ``max_tokens`` (or ``max_completion_tokens``), ``stop``, ``model``;
  greedy. ``finish_reason`` is ``stop`` (EOS or a stop string; vLLM's ``stop_reason`` says
  which string) or ``length``.
- ``GET /v1/models``.

It binds 127.0.0.1 unless told otherwise, limits the request size (bytes, prompts, tokens),
never reads paths from requests, and answers errors as ``{"error": {"message": ...}}``.

Example:
    >>> with serve(lmxray.load()) as srv:  # doctest: +SKIP
    ...     bb = lmxray.blackbox.connect(srv.url, srv.model.tokenizer, model=srv.name)
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from ..errors import InputError
from ..model import Model

__all__ = ["CompletionServer", "serve"]

MAX_BODY = 8 << 20
MAX_PROMPTS = 512
MAX_NEW_TOKENS = 256
MAX_MESSAGES = 256
MAX_STOP = 4
_PATHS = ("/v1/completions", "/v1/chat/completions")
_LOGITS_BUDGET = 64 << 20  # float32 logits per forward chunk


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class CompletionServer:
    """A running completions server for ``model`` (see :func:`serve`).

    Attributes:
        url: ``http://HOST:PORT/v1``.
        name: the model name it answers to.
        requests: completed requests (for tests and logs).
    """

    def __init__(
        self, model: Model, *, host: str = "127.0.0.1", port: int = 0, name: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not allow_remote:
            raise InputError(
                f"refusing to bind {host!r}: the completions server binds a loopback address "
                "(127.0.0.1) unless allow_remote=True"
            )
        self.model = model
        self.name = name or model.name
        self.requests = 0
        self._lock = threading.Lock()
        try:
            self._httpd = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port"
            ) from None
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        h, p = self._httpd.server_address[:2]
        self.url = f"http://{h}:{p}/v1"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CompletionServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="lmxray-completions", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> CompletionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ handler
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": server.name, "object": "model", "owned_by": "lmxray"}]})
                else:
                    self._error(404, f"unknown path {self.path[:100]!r}")

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                path = self.path.rstrip("/")
                if path not in _PATHS:
                    self._error(404, f"unknown path {self.path[:100]!r}")
                    return
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    size = -1
                if size < 0 or size > MAX_BODY:
                    self._error(413, f"request body must be 0..{MAX_BODY} bytes")
                    return
                try:
                    body = json.loads(self.rfile.read(size) or b"{}")
                    if not isinstance(body, dict):
                        raise _BadRequest("the request body must be a JSON object")
                    with server._lock, torch.no_grad():
                        out = server._chat(body) if path == _PATHS[1] else server._complete(body)
                except _BadRequest as exc:
                    self._error(exc.status, str(exc))
                    return
                except ValueError:
                    self._error(400, "the request body is not valid JSON")
                    return
                server.requests += 1
                self._send(200, out)

        return Handler

    # ------------------------------------------------------------------ completions
    def _prompts(self, prompt: Any) -> list[list[int]]:
        def one(p: Any) -> list[int]:
            if isinstance(p, str):
                return self.model.encode(p)
            if isinstance(p, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
                return list(p)
            raise _BadRequest("prompt must be a string, a list of token ids, or a list of those")

        if isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt)
        ):
            prompts = [one(prompt)]
        elif isinstance(prompt, list) and prompt:
            prompts = [one(p) for p in prompt]
        else:
            raise _BadRequest("prompt is missing or empty")
        if len(prompts) > MAX_PROMPTS:
            raise _BadRequest(f"at most {MAX_PROMPTS} prompts per request")
        vocab = self.model.vocab_size
        for p in prompts:
            if not p:
                raise _BadRequest("a prompt has no tokens")
            if any(not 0 <= t < vocab for t in p):
                raise _BadRequest(f"token ids must be in 0..{vocab - 1}")
        return prompts

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        requested = body.get("model")
        if requested is not None and requested != self.name:
            raise _BadRequest(f"unknown model {requested!r}; this server serves {self.name!r}", 404)
        prompts = self._prompts(body.get("prompt"))
        echo = bool(body.get("echo", False))
        n_lp = body.get("logprobs")
        max_tokens = body.get("max_tokens", 16)
        temperature = body.get("temperature", 0)
        if n_lp is not None and (not isinstance(n_lp, int) or isinstance(n_lp, bool) or not 0 <= n_lp <= 5):
            raise _BadRequest("logprobs must be an integer 0..5 or null")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= MAX_NEW_TOKENS:
            raise _BadRequest(f"max_tokens must be an integer 0..{MAX_NEW_TOKENS}")
        if temperature not in (0, 0.0, None):
            raise _BadRequest("this server decodes greedily only; use temperature 0")
        stop = self._stop(body.get("stop"))
        self._check_context(prompts, max_tokens)
        gen, finish, reasons = self._greedy(prompts, max_tokens, stop)
        seqs = [p + g for p, g in zip(prompts, gen, strict=True)]
        lps = self._token_logprobs(seqs, n_lp) if n_lp is not None else None
        tok = self.model.tokenizer
        choices = []
        for i, (p, g) in enumerate(zip(prompts, gen, strict=True)):
            shown = (p if echo else []) + g
            text = tok.decode(shown, skip_special_tokens=False) if shown else ""
            if reasons[i] is not None:
                head = tok.decode(p, skip_special_tokens=False) if echo else ""
                text = head + _cut(tok.decode(g, skip_special_tokens=False), stop)
            logprobs = None
            if lps is not None:
                lp, top = lps[i]
                start = 0 if echo else len(p)
                strings = self.model.token_strings(shown)
                offsets, pos = [], 0
                for s in strings:
                    offsets.append(pos)
                    pos += len(s)
                logprobs = {
                    "tokens": strings,
                    "token_logprobs": lp[start:],
                    "top_logprobs": top[start:],
                    "text_offset": offsets,
                }
            choices.append({"index": i, "text": text, "logprobs": logprobs,
                            "finish_reason": finish[i], "stop_reason": reasons[i]})
        n_prompt = sum(len(p) for p in prompts)
        n_gen = sum(len(g) for g in gen)
        return {
            "id": f"cmpl-lmxray-{self.requests}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                      "total_tokens": n_prompt + n_gen},
        }

    def _chunks(self, seqs: Sequence[Sequence[int]], positions: int) -> list[list[int]]:
        per_row = max(1, positions * self.model.vocab_size * 4)
        n = max(1, int(_LOGITS_BUDGET // per_row))
        idx = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        return [idx[a:a + n] for a in range(0, len(idx), n)]

    def _greedy(
        self, prompts: list[list[int]], max_tokens: int, stop: Sequence[str] = ()
    ) -> tuple[list[list[int]], list[str], list[str | None]]:
        """Greedy continuations (EOS not included), finish reasons, and the stop string that
        ended each one (None: EOS or length)."""
        gen: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        reasons: list[str | None] = [None] * len(prompts)
        eos = self.model.eos_token_id
        tok = self.model.tokenizer
        for _ in range(max_tokens):
            live = [i for i in range(len(prompts)) if not done[i]]
            if not live:
                break
            seqs = [prompts[i] + gen[i] for i in live]
            for chunk in self._chunks(seqs, 1):
                ids, mask, pos = self.model.pad_batch([seqs[j] for j in chunk])
                logits = self.model.forward(
                    input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
                ).logits[:, -1]
                nxt = logits.argmax(-1).tolist()
                for j, t in zip(chunk, nxt, strict=True):
                    i = live[j]
                    if eos is not None and t == eos:
                        done[i] = True
                        continue
                    gen[i].append(int(t))
                    if stop:
                        text = tok.decode(gen[i], skip_special_tokens=False)
                        met = [s for s in stop if s in text]
                        if met:
                            done[i] = True
                            reasons[i] = min(met, key=text.find)
        finish = ["stop" if d else "length" for d in done]
        return gen, finish, reasons

    def _stop(self, stop: Any) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or len(stops) > MAX_STOP
                or not all(isinstance(x, str) and x for x in stops)):
            raise _BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOP}")
        return list(stops)

    def _check_context(self, prompts: list[list[int]], max_tokens: int) -> None:
        limit = self.model.max_length
        if limit is not None and any(len(p) + max_tokens > limit for p in prompts):
            raise _BadRequest(f"prompt + max_tokens exceeds the model's context of {limit}")

    # ------------------------------------------------------------------ chat completions
    def _chat_prompt(self, messages: Any) -> str:
        """The prompt text of a conversation (the chat template, or contents joined)."""
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages is missing or empty")
        if len(messages) > MAX_MESSAGES:
            raise _BadRequest(f"at most {MAX_MESSAGES} messages per request")
        turns = []
        for m in messages:
            if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                    or not isinstance(m.get("content"), str)):
                raise _BadRequest(
                    "each message must be {\"role\": \"system\"|\"user\"|\"assistant\", "
                    "\"content\": string}"
                )
            turns.append({"role": m["role"], "content": m["content"]})
        if not getattr(self.model.tokenizer, "chat_template", None):
            return "\n\n".join(t["content"] for t in turns)
        if turns[-1]["role"] == "assistant":  # a prefill: the answer continues it
            head = self.model.chat(turns[:-1]) if len(turns) > 1 else ""
            return head + turns[-1]["content"]
        return self.model.chat(turns)

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        requested = body.get("model")
        if requested is not None and requested != self.name:
            raise _BadRequest(f"unknown model {requested!r}; this server serves {self.name!r}", 404)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise _BadRequest(f"max_tokens must be an integer 1..{MAX_NEW_TOKENS}")
        if body.get("temperature", 0) not in (0, 0.0, None):
            raise _BadRequest("this server decodes greedily only; use temperature 0")
        if body.get("n", 1) != 1:
            raise _BadRequest("this server returns one choice (n=1)")
        if body.get("logprobs"):
            raise _BadRequest("this server gives no log-probs on chat; use /v1/completions")
        stop = self._stop(body.get("stop"))
        ids = self.model.encode(self._chat_prompt(body.get("messages")))
        if not ids:
            raise _BadRequest("the conversation has no tokens")
        self._check_context([ids], max_tokens)
        gen, finish, reasons = self._greedy([ids], max_tokens, stop)
        text = self.model.tokenizer.decode(gen[0], skip_special_tokens=True)
        if reasons[0] is not None:
            text = _cut(text, stop)
        return {
            "id": f"chatcmpl-lmxray-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish[0], "stop_reason": reasons[0]}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen[0]),
                      "total_tokens": len(ids) + len(gen[0])},
        }

    def _token_logprobs(
        self, seqs: list[list[int]], n_top: int
    ) -> list[tuple[list[float | None], list[dict[str, float] | None]]]:
        out: list[Any] = [None] * len(seqs)
        longest = max(len(s) for s in seqs)
        for chunk in self._chunks(seqs, longest):
            ids, mask, pos = self.model.pad_batch([seqs[i] for i in chunk])
            logits = self.model.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            lsm = torch.log_softmax(logits.float(), dim=-1)
            for j, i in enumerate(chunk):
                s = seqs[i]
                row = lsm[j, ids.shape[1] - len(s):]
                nxt = torch.as_tensor(s[1:], device=row.device)
                lp = row[:-1].gather(-1, nxt[:, None])[:, 0].tolist() if len(s) > 1 else []
                tops: list[dict[str, float] | None] = [None]
                if n_top > 0 and len(s) > 1:
                    val, arg = row[:-1].topk(n_top, dim=-1)
                    for v, a in zip(val.tolist(), arg.tolist(), strict=True):
                        names = self.model.token_strings(a)
                        tops.append(dict(zip(names, v, strict=True)))
                else:
                    tops += [None] * (len(s) - 1)
                out[i] = ([None, *lp], tops)
        return out


def _cut(text: str, stop: Sequence[str]) -> str:
    """``text`` before the earliest stop string it holds."""
    found = [i for i in (text.find(x) for x in stop) if i >= 0]
    return text[: min(found)] if found else text


def serve(
    model: Model, *, host: str = "127.0.0.1", port: int = 0, name: str | None = None,
    allow_remote: bool = False,
) -> CompletionServer:
    """Start serving ``model`` on ``host:port`` (port 0: any free port) in a background thread.

    Returns the running :class:`CompletionServer`; use it as a context manager or call
    ``close()``.
    """
    if not isinstance(model, Model):
        raise InputError("serve() needs an lmxray Model (lmxray.load(...))")
    return CompletionServer(model, host=host, port=port, name=name, allow_remote=allow_remote).start()
