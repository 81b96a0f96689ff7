"""Load test of ``lmxray serve`` on 127.0.0.1: C clients x R requests (default 20 x 5), each an
Explain job (saliency) on its own prompt. Checks that no request is lost (every job ends ``done``,
429s are retried and counted) or mixed up (each result holds its own prompt's tokens and equals
the direct Python call on that prompt), that memory is stable (server RSS after a warm-up round,
after the load, after a second load), and reports latency percentiles (submit -> result).

    PYTHONPATH=src python3 benchmarks/app/load.py [--clients 20] [--requests 5] [--rounds 2] [--out benchmarks/results/app-load.json]

A request counts as lost unless its event stream ended on ``done`` and its result came back; for
each lost request the output says what its client saw (the stream's events, the result's status,
or the exception).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _server import start, wait_done  # noqa: E402

import lmxray  # noqa: E402


def prompt_of(c: int, r: int) -> str:
    return f"Client {c} asks question {r}: the capital of France is"


def one(client: httpx.Client, url: str, c: int, r: int, out: dict) -> None:
    body = {"kind": "explain", "prompt": prompt_of(c, r), "target": " Paris", "methods": ["saliency"]}
    t0 = time.perf_counter()
    retries = 0
    while True:
        sub = client.post(f"{url}/api/jobs", json=body, timeout=60)
        if sub.status_code != 429:
            break
        retries += 1
        time.sleep(0.1 * min(retries, 10))
    if sub.status_code != 202:
        out[(c, r)] = {"ok": False, "why": {"submit_status": sub.status_code, "submit": sub.text[:200]}}
        return
    job_id = sub.json()["id"]
    events: list = []
    state = wait_done(client, url, job_id, events)
    res = client.get(f"{url}/api/jobs/{job_id}/result", timeout=60)
    ok = state.get("state") == "done" and res.status_code == 200
    out[(c, r)] = {"ok": ok, "seconds": time.perf_counter() - t0, "retries": retries,
                   "result": res.json() if res.status_code == 200 else None}
    if not ok:  # say what this client saw: the events of the stream, the result's status
        out[(c, r)]["why"] = {"job": job_id, "events": [(e["state"], e["label"]) for e in events],
                              "result_status": res.status_code, "result": res.text[:200]}


def round_(url: str, clients: int, requests: int) -> dict:
    out: dict = {}

    def client_loop(c: int) -> None:
        with httpx.Client() as cl:
            for r in range(requests):
                try:
                    one(cl, url, c, r, out)
                except Exception as exc:  # a client-side failure is a lost request too: say which
                    out[(c, r)] = {"ok": False, "why": {"exception": f"{type(exc).__name__}: {exc}"[:300]}}

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["wall"] = time.perf_counter() - t0
    return out


def check(out: dict, clients: int, requests: int, model) -> dict:
    lost = mixed = 0
    detail = []
    for c in range(clients):
        for r in range(requests):
            got = out.get((c, r))
            if not got or not got["ok"]:
                lost += 1
                detail.append({"client": c, "request": r, **(got or {}).get("why", {"seen": "nothing"})})
                continue
            a = got["result"]["attributions"][0]
            if got["result"]["prompt"] != prompt_of(c, r) or a["source_tokens"][:-1] != model.token_strings(model.encode(prompt_of(c, r))):
                mixed += 1
    return {"lost": lost, "mixed": mixed, "lost_detail": detail}


def summary(name: str, out: dict, clients: int, requests: int, model) -> dict:
    lat = sorted(v["seconds"] for k, v in out.items() if k != "wall" and v.get("ok"))

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {"round": name, **check(out, clients, requests, model), "n": clients * requests,
            "retries_429": sum(v["retries"] for k, v in out.items() if k != "wall" and v.get("ok")),
            "p50_s": q(50), "p90_s": q(90), "p99_s": q(99), "max_s": lat[-1] if lat else float("nan"),
            "mean_s": statistics.mean(lat) if lat else float("nan"),
            "wall_s": out["wall"], "req_per_s": len(lat) / out["wall"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="load rounds against one server")
    ap.add_argument("--out", default="benchmarks/results/app-load.json")
    a = ap.parse_args()
    load_start = os.getloadavg()[0]
    proc, url = start("--queue", "32")
    outs, rss = [], []
    try:
        server = psutil.Process(proc.pid)
        round_(url, 4, 2)  # warm-up
        rss.append(server.memory_info().rss)
        for _ in range(a.rounds):
            outs.append(round_(url, a.clients, a.requests))
            rss.append(server.memory_info().rss)
    finally:
        proc.terminate()
        proc.wait(10)
    model = lmxray.load()
    # numeric agreement: a sample of served results equals the direct Python call
    worst = 0.0
    for c, r in ((0, 0), (a.clients - 1, a.requests - 1)):
        ref = model.attribute(prompt_of(c, r), " Paris", method="saliency")
        got = np.array([[np.nan if v is None else v for v in row] for row in outs[0][(c, r)]["result"]["attributions"][0]["scores"]])
        worst = max(worst, float(np.nanmax(np.abs(got - ref.scores))))
    rows = [summary(f"load {i + 1}", out, a.clients, a.requests, model) for i, out in enumerate(outs)]
    mem = {"rss_after_warmup_mb": rss[0] / 2**20, "rss_after_round_mb": [x / 2**20 for x in rss[1:]],
           "growth_after_round_1_mb": (rss[-1] - rss[1]) / 2**20}
    load = os.getloadavg()[0]
    print(f"lmxray serve load test: {a.rounds} rounds of {a.clients} clients x {a.requests} requests (saliency Explain "
          f"jobs), 127.0.0.1; {os.cpu_count()} CPUs, load average {load_start:.1f} at the start, {load:.1f} at the end")
    print(f"{'round':8} {'n':>4} {'lost':>5} {'mixed':>6} {'429s':>5} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'max s':>7} {'req/s':>6}")
    for r in rows:
        print(f"{r['round']:8} {r['n']:>4} {r['lost']:>5} {r['mixed']:>6} {r['retries_429']:>5} {r['p50_s']:>7.2f} "
              f"{r['p90_s']:>7.2f} {r['p99_s']:>7.2f} {r['max_s']:>7.2f} {r['req_per_s']:>6.2f}")
    print(f"server RSS MB: warm-up {mem['rss_after_warmup_mb']:.0f}, after each round "
          f"{', '.join(f'{x:.0f}' for x in mem['rss_after_round_mb'])} (growth after round 1 {mem['growth_after_round_1_mb']:+.1f})")
    for r in rows:
        for d in r["lost_detail"]:
            print(f"LOST in {r['round']}: {json.dumps(d)}")
    print(f"agreement with direct m.attribute(): max |diff| = {worst:.2e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"command": "PYTHONPATH=src python3 benchmarks/app/load.py " + " ".join(sys.argv[1:]),
                                       "rounds": rows, "memory": mem, "max_abs_diff_vs_python": worst,
                                       "clients": a.clients, "requests": a.requests,
                                       "load_average_start": load_start, "load_average": load,
                                       "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
