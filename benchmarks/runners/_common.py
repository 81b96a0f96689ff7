"""Shared plumbing for the benchmark runners (one small module per library).

A runner is started by ``benchmarks/run.py`` in a fresh process inside the venv of the library
it drives::

    VENV/bin/python benchmarks/runners/<lib>_runner.py --method NAME --config JSON \
        --warmup 1 --repeats 3 --out DIR

It builds everything it needs first (model load, explainer construction: not timed), then calls
the attribution ``warmup`` times untimed and ``repeats`` times timed (``time.perf_counter``
around exactly one user-level attribution call, result conversion to numpy included), and writes

- ``DIR/scores.npy``: float64 ``[n_targets, n_sources]``, sources = the 40 prompt tokens then the
  10 target tokens, NaN where the library gives no score (future positions, or columns that the
  library does not attribute to, such as Captum's earlier-target columns);
- ``DIR/result.json``: times, median, versions, thread settings, load average, notes, extras.

This module must import nothing heavy at module level: ``setup_threads`` has to run before torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
MODEL_DIR = Path(os.environ.get("LMXRAY_BENCH_MODEL", BENCH_DIR / ".peers" / "model"))

# Standard input (shared/bench/README.md): 40 prompt tokens, forced 10-token target.
PROMPT = (
    "The software is provided without any warranty of any kind, and the authors shall not be "
    "held responsible for any damages that may result from its use. You may freely copy and "
    "distribute this work, provided that"
)
TARGET = " the copyright notice and this permission notice are preserved."
N_PROMPT = 40
N_TARGET = 10
N_SOURCES = N_PROMPT + N_TARGET


def setup_threads(n: int) -> None:
    """Pin intra-op threads before torch is imported (env) and after (torch API)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set / parallel work started
        pass


def load_hf(model_dir: Path | str = MODEL_DIR):
    """The bench model and tokenizer, fp32, eval mode (dropout off)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))  # fp32 checkpoint
    model.eval()
    return model, tok


def check_tokens(tok) -> tuple[list[int], list[int]]:
    """Prompt and target ids; asserts the standard-input facts the alignment relies on."""
    p = tok(PROMPT, add_special_tokens=True)["input_ids"]
    t = tok(TARGET, add_special_tokens=False)["input_ids"]
    both = tok(PROMPT + TARGET, add_special_tokens=True)["input_ids"]
    assert len(p) == N_PROMPT and len(t) == N_TARGET, (len(p), len(t))
    assert both == p + t, "prompt+target does not tokenize as prompt tokens + target tokens"
    assert tok.bos_token_id not in p, "tokenizer adds a BOS: source alignment would shift"
    return p, t


def versions(*dists: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for d in ("torch", "transformers", *dists):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = "missing"
    return out


def full_matrix(rows, n_cols_given: int | None = None):
    """Place a [T, k] array into a [T, N_SOURCES] NaN matrix (first k columns)."""
    import numpy as np

    a = np.asarray(rows, dtype=np.float64)
    k = a.shape[1] if n_cols_given is None else n_cols_given
    out = np.full((a.shape[0], N_SOURCES), np.nan)
    out[:, :k] = a[:, :k]
    return out


def causal_mask(scores):
    """NaN where source s is at or after the position of target step t (s >= N_PROMPT + t)."""
    import numpy as np

    s = np.array(scores, dtype=np.float64, copy=True)
    for t in range(s.shape[0]):
        s[t, N_PROMPT + t :] = np.nan
    return s


Builder = Callable[[str, dict[str, Any]], tuple[Callable[[], Any], dict[str, Any]]]


def main(library: str, build: Builder, dists: tuple[str, ...] = ()) -> None:
    """Runner entry point. ``build(method, config) -> (call, meta)``; ``call()`` runs one
    attribution and returns the [n_targets, n_sources] scores; ``meta`` may hold notes, extras
    and an optional ``after(scores) -> dict`` hook run once after timing (FLOP counting,
    completeness checks: never inside the timed region)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True)
    ap.add_argument("--config", default="{}")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    setup_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "library": library,
        "method": args.method,
        "config": json.loads(args.config),
        "threads": args.threads,
        "warmup": args.warmup,
        "pid": os.getpid(),
        "loadavg_start": os.getloadavg()[0],
    }
    try:
        import numpy as np
        import torch

        res["versions"] = versions(*dists)
        res["torch_threads"] = torch.get_num_threads()
        call, meta = build(args.method, res["config"])
        after = meta.pop("after", None)
        res.update(meta)
        scores = None
        for _ in range(args.warmup):
            scores = call()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scores = call()
            times.append(time.perf_counter() - t0)
        scores = np.asarray(scores, dtype=np.float64)
        expect = tuple(res.get("expect_shape") or (N_TARGET, N_SOURCES))
        assert scores.shape == expect, (scores.shape, expect)
        np.save(out / "scores.npy", scores)
        res["times"] = times
        res["median"] = statistics.median(times)
        res["ok"] = True
        if after is not None:
            res.update(after(scores))
    except Exception as e:  # reported, not raised: the orchestrator keeps going
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
    res["loadavg_end"] = os.getloadavg()[0]
    (out / "result.json").write_text(json.dumps(res, indent=1, default=str))
    sys.exit(0 if res["ok"] else 1)
