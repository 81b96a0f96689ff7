"""lmxray's residual-stream patching sweep on the bench GPT-2, timed like every other runner.

The same computation as ``benchmarks/runners/tlens_runner.py`` (TransformerLens
``patching.get_act_patch_resid_pre``): clean run = the standard prompt + target (50 tokens);
corrupted run = the same with every prompt token replaced by ``<unk>`` (id 0); metric = the sum
of the 10 target log-probabilities (teacher forced, read at positions 39..48); one patch per
(layer, position) of ``resid_pre``. Output: the raw metric ``[n_layers, 50]``.

lmxray runs it with :func:`lmxray.internals.activation_patching`: all 300 patches are batched
(many per forward), each group of patches at position ``p`` reuses the corrupted run's KV cache
for tokens ``< p``, and logits are computed only at the 10 metric positions.

Usage (normally through ``bench_patching.py``)::

    VENV/bin/python benchmarks/patching/lmxray_patching_runner.py --method resid_pre_patching \
        --config '{"corrupt_id": 0}' --warmup 1 --repeats 3 --out DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))

import _common as C  # noqa: E402


def build(method: str, cfg: dict[str, Any]):
    import numpy as np
    import torch

    import lmxray
    from lmxray.internals import activation_patching

    if method != "resid_pre_patching":
        raise ValueError(f"unknown method {method}")
    m = lmxray.load(str(C.MODEL_DIR))
    p, t = C.check_tokens(m.tokenizer)
    clean = p + t
    corrupted = [int(cfg.get("corrupt_id", 0))] * C.N_PROMPT + t
    tgt = torch.tensor(clean[C.N_PROMPT:])
    k = C.N_TARGET + 1  # logits at positions 39..49; the metric reads 39..48

    def metric(logits: torch.Tensor) -> torch.Tensor:  # [N, k, V] -> [N]
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return lp[:, torch.arange(C.N_TARGET), tgt].sum(-1)

    kw = {k_: v for k_, v in cfg.items() if k_ in ("prefix_reuse", "batch_size", "memory_budget")}
    last: dict[str, Any] = {}

    def call():
        r = activation_patching(m, clean, corrupted, sites=["resid_pre"], metric=metric, metric_positions=k, **kw)
        last["r"] = r
        return np.asarray(r.raw["resid_pre"], dtype=np.float64)

    def after(scores):
        r = last["r"]
        return {"metric_clean": r.clean_value, "metric_corrupted": r.corrupt_value,
                "forward_rows": r.info["n_forward_rows"], "shape": list(np.shape(scores))}

    return call, {"notes": "lmxray activation_patching, batched + KV prefix reuse", "after": after,
                  "expect_shape": [int(m.n_layers), C.N_SOURCES]}


if __name__ == "__main__":
    C.main("lmxray", build, dists=("lmxray", "transformer-lens"))
