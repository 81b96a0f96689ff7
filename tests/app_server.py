"""Test helpers: run the lmxray app with uvicorn in a background thread on a free port; wait for
a job and fetch its result through a client."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Background:
    """``with Background(app) as url:`` serves ``app`` on 127.0.0.1 until the block ends."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait(client: Any, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``GET /api/jobs/{id}`` until the job has finished; its last state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["state"] in ("done", "error", "cancelled"):
            return s  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def run(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Submit ``body`` (expecting 202), wait, and return ``(final state, result response)``."""
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    s = wait(client, r.json()["id"])
    return s, client.get(f"/api/jobs/{s['id']}/result")
