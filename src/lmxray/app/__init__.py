"""``lmxray serve``: an interactive explorer in the browser (Starlette + uvicorn).

Three views over the public API: **Explain** (token heatmaps, two methods side by side, the
verdict when the verification capability exists), **Inside** (logit/tuned lens, causal tracing,
activation patching, head scores) and **Judge** (a leaderboard on a zoo task or an uploaded JSONL,
the self-explanation tests on a zoo organism or a served model, and the feature view of an SAE
named at start-up).
Jobs run one at a time on one worker thread (the model is loaded once), from a bounded queue
(429 when full); they stream progress (server-sent events) and can be cancelled.

>>> from lmxray.app import create_app                 # doctest: +SKIP
>>> app = create_app(["lmxray-tiny"])                 # an ASGI app; or: lmxray serve
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn

from ..errors import InputError
from .jobs import Cancelled, Job, JobQueue
from .limits import Limits
from .server import LOCAL_HOSTS, create_app

__all__ = ["create_app", "serve", "check_bind", "Limits", "Job", "JobQueue", "Cancelled", "LOCAL_HOSTS"]

MIN_TOKEN = 16


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-local ``host`` without an access token, and a short token."""
    if token is not None and len(token) < MIN_TOKEN:
        raise InputError(f"the access token has {len(token)} characters; use at least {MIN_TOKEN} "
                         "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if host not in LOCAL_HOSTS and token is None:
        raise InputError(f"binding to {host!r} exposes the server beyond this machine; pass --token "
                         "(an access token of 16+ characters) or bind 127.0.0.1")


def serve(models: list[str] | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, limits: Limits | None = None, log_level: str = "warning",
          announce: Callable[[str], None] | None = None, saes: dict[str, Any] | None = None) -> None:
    """Load ``models`` (default: the embedded ``lmxray-tiny``) and ``saes`` (``{name: folder}``,
    for the first model) and serve the app until stopped; ``announce(url)`` is called once the
    models are loaded."""
    check_bind(host, token)
    if not 0 < port < 65536:
        raise InputError(f"port must be 1..65535, got {port}")
    app: Any = create_app(models or ["lmxray-tiny"], token=token, limits=limits, saes=saes)
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{port}/" + ("?token=<your token>" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
