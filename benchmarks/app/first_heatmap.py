"""Time from submit to first heatmap: saliency on a 20-token prompt with the default model
(lmxray-tiny), served by ``lmxray serve`` on 127.0.0.1. Three measures side by side, median of
``--repeat`` runs after one warm-up: the direct Python call (the peer: ``m.attribute``), the API
round trip (POST job -> progress events -> GET result), and the browser (click Explain -> first
heatmap cell drawn, headless chromium via Playwright). The served scores are checked against the
direct call's. Goal: under 1 s on the 2-core CPU.

    PYTHONPATH=src python3 benchmarks/app/first_heatmap.py [--repeat 10] [--out benchmarks/results/app-first-heatmap.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _server import start, wait_done  # noqa: E402

import lmxray  # noqa: E402

WORDS = ("The capital of France is Paris and the capital of Spain is Madrid while the capital of "
         "Italy is Rome and the capital of Germany is").split()
TARGET = " Berlin"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
BROWSER_RUN = """async () => {
  const out = document.querySelector('#explain-out');
  while (out.firstChild) out.removeChild(out.firstChild);
  const seen = new Promise((resolve) => {
    const obs = new MutationObserver(() => {
      if (out.querySelector('.heat .tok')) { obs.disconnect(); resolve(performance.now()); }
    });
    obs.observe(out, { childList: true, subtree: true });
  });
  const t0 = performance.now();
  document.querySelector('#explain-form button[type=submit]').click();
  return (await seen) - t0;
}"""


def prompt_of(model) -> str:
    for n in range(len(WORDS), 0, -1):
        p = " ".join(WORDS[:n])
        if len(model.encode(p)) <= 20:
            return p
    raise RuntimeError("no 20-token prompt")


def api_once(client: httpx.Client, url: str, prompt: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    sub = client.post(f"{url}/api/jobs", json={"kind": "explain", "prompt": prompt, "target": TARGET,
                                               "methods": ["saliency"]})
    state = wait_done(client, url, sub.json()["id"])
    res = client.get(f"{url}/api/jobs/{state['id']}/result").json()
    return time.perf_counter() - t0, res["attributions"][0]["scores"]


def browser_times(url: str, prompt: str, repeat: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = b.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#explain-form textarea[name=prompt]", prompt)
        page.fill("#explain-form input[name=target]", TARGET)
        times = [page.evaluate(BROWSER_RUN) / 1000 for _ in range(repeat + 1)][1:]
        b.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/app-first-heatmap.json")
    a = ap.parse_args()
    model = lmxray.load()
    prompt = prompt_of(model)
    n_tokens = len(model.encode(prompt))
    direct = []
    for _ in range(a.repeat + 1):
        t0 = time.perf_counter()
        ref = model.attribute(prompt, TARGET, method="saliency")
        direct.append(time.perf_counter() - t0)
    direct = direct[1:]
    proc, url = start()
    try:
        with httpx.Client(timeout=120) as client:
            runs = [api_once(client, url, prompt) for _ in range(a.repeat + 1)][1:]
        browser = browser_times(url, prompt, a.repeat)
    finally:
        proc.terminate()
        proc.wait(10)
    api = [t for t, _ in runs]
    got = np.array([[np.nan if v is None else v for v in row] for row in runs[-1][1]], dtype=np.float32)
    diff = float(np.nanmax(np.abs(got - ref.scores)))
    med = {k: statistics.median(v) for k, v in (("direct", direct), ("api", api), ("browser", browser))}
    load = os.getloadavg()[0]
    print(f"submit -> first heatmap, saliency, {n_tokens}-token prompt, lmxray-tiny, median of {a.repeat}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (min = the closest to a quiet machine)")
    print(f"{'measure':34} {'median s':>9} {'min s':>7} {'max s':>7} {'x direct':>9}")
    for k, label in (("direct", "direct m.attribute() (peer)"), ("api", "API: POST -> events -> result"),
                     ("browser", "browser: click -> heatmap drawn")):
        v = {"direct": direct, "api": api, "browser": browser}[k]
        print(f"{label:34} {med[k]:>9.3f} {min(v):>7.3f} {max(v):>7.3f} {med[k] / med['direct']:>9.2f}")
    print(f"served scores vs direct: max |diff| = {diff:.2e}; goal < 1 s: {'met' if med['browser'] < 1 else 'NOT met'}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"prompt_tokens": n_tokens, "repeat": a.repeat, "median_s": med,
                                       "direct_s": direct, "api_s": api, "browser_s": browser,
                                       "max_abs_diff": diff, "load_average": load,
                                       "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
