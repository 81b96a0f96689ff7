"""The ASGI app of ``lmxray serve``: static pages, a JSON API over the job queue, and the guards.

Guards, in one ASGI middleware (:class:`Guard`): the Host header must name this machine unless an
access token is set (DNS-rebinding defence); with a token, every request carries it (header
``Authorization: Bearer``, or the cookie set when the page is opened with ``?token=``); writes
must be same-origin JSON (no CORS headers are ever sent, so other sites cannot read or post);
bodies over the size limit get 413; every response carries a restrictive Content-Security-Policy.
Errors are JSON ``{"error": "..."}`` with a 4xx status (a bug is a JSON 500, never a page).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import zoo
from .._version import __version__
from ..attribution.base import methods
from ..errors import InputError, LmxrayError
from ..io import dumps
from .jobs import TERMINAL, Job, JobQueue, QueueFull, cancel_hooks
from .judge_tasks import BIAS_KINDS, ORGANISM_TASKS, SE_TESTS, load_saes, read_saes
from .judge_tasks import KINDS as JUDGE_KINDS
from .limits import Limits, choice
from .tasks import KINDS as BASE_KINDS
from .tasks import PATCH_SITES, TRACE_KINDS, Context, Models, runner, verify_available

__all__ = ["create_app", "LOCAL_HOSTS", "STATIC", "CSP"]

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "lmxray_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KINDS: dict[str, Any] = {**BASE_KINDS, **JUDGE_KINDS}
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """Host, token, origin and size checks, and the security headers (pure ASGI)."""

    def __init__(self, app: Any, token: str | None, body_bytes: int) -> None:
        self.app, self.token, self.body_bytes = app, token, body_bytes

    def _refusal(self, scope: dict[str, Any], headers: Headers) -> tuple[str, int] | None:
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") or "]" in host else host
        if self.token is None and hostname not in LOCAL_HOSTS:
            return f"Host {host[:80]!r} is not this machine; open http://127.0.0.1 (no token set)", 421
        if self.token is not None and not self._has_token(scope, headers):
            return "this server needs its access token: open the page with ?token=... or send Authorization: Bearer", 401
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and origin is not None and origin.split("://", 1)[-1] != host:
            return f"cross-origin request from {origin[:80]!r} refused", 403
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.body_bytes):
            return f"request body over the limit of {self.body_bytes} bytes; send less", 413
        return None

    def _query_token(self, scope: dict[str, Any]) -> str | None:
        got = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return got[0] if got else None

    def _has_token(self, scope: dict[str, Any], headers: Headers) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        cookie = SimpleCookie(headers.get("cookie", ""))
        given = [auth[7:] if auth.startswith("Bearer ") else None,
                 cookie[COOKIE].value if COOKIE in cookie else None, self._query_token(scope)]
        return any(g is not None and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, Headers(scope=scope))
        set_cookie = self.token is not None and self._query_token(scope) is not None

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
                if set_cookie and refusal is None:
                    value = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                    message["headers"].append((b"set-cookie", value.encode()))
            await send(message)

        if refusal is not None:
            await error(*refusal)(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)


class Api:
    """The HTTP handlers over one :class:`JobQueue` and the served models."""

    def __init__(self, models: Models, limits: Limits, saes: dict[str, Any] | None = None) -> None:
        self.ctx = Context(models, limits, saes=saes or {})
        self.queue = JobQueue(limits.queue, limits.kept_jobs)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def info(self, request: Request) -> Response:
        return JSONResponse({
            "version": __version__, "models": self.ctx.models.names, "methods": methods(),
            "tasks": list(zoo.TASKS), "limits": self.ctx.limits.to_dict(), "verify": verify_available(),
            "trace_kinds": list(TRACE_KINDS), "patch_sites": list(PATCH_SITES), "queued": self.queue.pending(),
            "selfexplain": {"tasks": list(ORGANISM_TASKS), "tests": list(SE_TESTS), "bias_kinds": list(BIAS_KINDS)},
            "saes": [s.info() for s in self.ctx.saes.values()],
        })

    async def submit(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error("send the job as JSON (Content-Type: application/json)", 415)
        raw = await request.body()
        if len(raw) > self.ctx.limits.body_bytes:
            return error(f"request body over the limit of {self.ctx.limits.body_bytes} bytes; send less", 413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return error("the request body is not JSON; send a JSON object", 400)
        if not isinstance(body, dict):
            return error("the request body must be a JSON object", 400)
        kind = choice(body, "kind", tuple(KINDS))
        name = self.ctx.models.check(body.get("model"))
        args = KINDS[kind][0](body, self.ctx)
        name = args.pop("on_model", name)  # an SAE's feature view runs on the model it was named for
        run = self._runner(kind, name)
        models = self.ctx.models

        def work(job: Job) -> Any:
            job.step(f"loading {name}" if not models.is_loaded(name) else "starting")
            model = models.get(name)
            with cancel_hooks(model.hf, job):
                return run(job, model, args)

        try:
            job = self.queue.submit(Job(kind=kind, run=work))
        except QueueFull as exc:
            return error(str(exc), 429)
        return JSONResponse({**job.snapshot(), "queued": self.queue.pending()}, status_code=202)

    def _runner(self, kind: str, name: str) -> Any:
        if kind in JUDGE_KINDS:
            return lambda job, model, args: JUDGE_KINDS[kind][1](job, model, args, self.ctx)
        return runner(kind, self.ctx.models, name)

    def _job(self, request: Request) -> Job:
        job = self.queue.get(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, "no such job (it may have expired); run it again")
        return job

    async def status(self, request: Request) -> Response:
        return JSONResponse(self._job(request).snapshot())

    async def cancel(self, request: Request) -> Response:
        job = self._job(request)
        if job.state not in TERMINAL:
            self.queue.cancel(job)
        return JSONResponse(job.snapshot())

    async def events(self, request: Request) -> Response:
        job = self._job(request)

        async def stream() -> Any:
            seen, wake = -1, asyncio.Event()
            job.watchers.append((asyncio.get_running_loop(), wake))
            try:
                while True:
                    wake.clear()
                    # Read "finished?" BEFORE the snapshot: the worker may finish the job between
                    # the two, and a stream that then stopped would end on a "running" event
                    # (the load test lost 1 request in 200 that way). A job seen finished here
                    # is finished in the snapshot below, so the last event is always the final state.
                    final = job.state in TERMINAL
                    if job.version != seen or final:
                        seen = job.version
                        yield f"data: {json.dumps(job.snapshot())}\n\n"
                    if final:
                        return
                    if job.version == seen:  # sleep until the worker touches the job
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(wake.wait(), 5)
                    await asyncio.sleep(0.02)  # coalesce bursts (one event per forward pass)
            finally:
                job.watchers.remove((asyncio.get_running_loop(), wake))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    def _output(self, job: Job) -> Any:
        if job.state == "error":
            raise LmxrayError(job.error or "the job failed") if job.status < 500 else HTTPException(500, job.error)
        if job.state != "done":
            raise HTTPException(409, f"the job is {job.state}; wait for it to finish"
                                if job.state != "cancelled" else "the job was cancelled; run it again")
        return job.output

    async def result(self, request: Request) -> Response:
        job = self._job(request)
        out = self._output(job)
        return Response(dumps({**out.payload, "job": job.snapshot()}, None), media_type="application/json")

    async def export(self, request: Request) -> Response:
        job = self._job(request)
        out = self._output(job)
        fmt = choice(dict(request.query_params), "format", ("json", "html"), "json")
        index = request.query_params.get("index", "0")
        if not index.isdigit() or int(index) >= len(out.results):
            raise InputError(f"index must be 0..{len(out.results) - 1}, got {index!r}")
        res = out.results[int(index)]
        name = f"lmxray-{job.kind}-{job.id[:6]}-{index}.{fmt}"
        body, media = (res.to_json(indent=1), "application/json") if fmt == "json" else (res.to_html(), "text/html")
        return Response(body, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'})


async def _lmxray_error(request: Request, exc: Exception) -> Response:
    return error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else f"no such page: {request.url.path[:80]}"
    return error(str(detail), exc.status_code)


async def _bug(request: Request, exc: Exception) -> Response:
    return error(f"internal error: {type(exc).__name__}: {exc}"[:300], 500)


def create_app(models: list[str] | dict[str, Any] | tuple[str, ...] = ("lmxray-tiny",), *, token: str | None = None,
               limits: Limits | None = None, preload: bool = True, saes: dict[str, Any] | None = None) -> Starlette:
    """The app serving ``models`` (names given at start-up, or ``{name: Model}`` already loaded).

    ``preload`` loads every named model now (so a bad name fails at start-up, and the first
    request does not wait for it). ``saes`` (``{name: SAE folder or lmxray.concepts.SAE}``) are
    offered by name in the feature view, for the first model (each is checked to fit it now).
    """
    limits = limits or Limits()
    dictionaries = read_saes(saes or {})
    served = Models(dict(models) if isinstance(models, dict) else list(models))
    if preload:
        for name in served.names:
            served.get(name)
    first = served.names[0]
    api = Api(served, limits, load_saes(dictionaries, first, served.get(first)) if dictionaries else None)
    routes = [
        Route("/", api.index),
        Route("/api/info", api.info),
        Route("/api/jobs", api.submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", api.status),
        Route("/api/jobs/{job_id}", api.cancel, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/cancel", api.cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/events", api.events),
        Route("/api/jobs/{job_id}/result", api.result),
        Route("/api/jobs/{job_id}/export", api.export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Any] = {LmxrayError: _lmxray_error, HTTPException: _http_error, Exception: _bug}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.api = api
    app.add_middleware(Guard, token=token, body_bytes=limits.body_bytes)  # type: ignore[arg-type]
    return app
