"""Start ``lmxray serve`` in a subprocess on a free 127.0.0.1 port (shared by the app benchmarks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "lmxray", "serve", "--port", str(port), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a loaded 2-core machine can take minutes to import torch
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lmxray serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(f"{url}/api/info", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("lmxray serve did not start in 600 s")


def wait_done(client: httpx.Client, url: str, job_id: str, events: list | None = None) -> dict:
    """Follow the job's server-sent events to the end of the stream; the last event (which the
    server promises is the final state), each event appended to ``events`` when given."""
    with client.stream("GET", f"{url}/api/jobs/{job_id}/events", timeout=300) as r:
        state: dict = {}
        for line in r.iter_lines():
            if line.startswith("data: "):
                state = json.loads(line[6:])
                if events is not None:
                    events.append(state)
        return state
