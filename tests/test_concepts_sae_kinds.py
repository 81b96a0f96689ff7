"""The SAE kinds' sparsity at inference: BatchTopK's inference threshold keeps the L0 that
training kept (k per token on average); the defaults of every kind give a sparse code."""

from __future__ import annotations

import torch

from lmxray.concepts import TrainConfig, fit_sae
from test_concepts import _one_thread, _sparse_data  # noqa: F401  (autouse: one torch thread)


def test_batchtopk_inference_threshold_keeps_k_per_token():
    cfg = TrainConfig(kind="batchtopk", d_sae=48, k=4, steps=50, batch_tokens=256, lr=3e-3,
                      dead_tokens=5000)
    run = fit_sae(_sparse_data, 16, cfg, progress=False)
    x = torch.cat([_sparse_data(10_000 + i) for i in range(4)])
    with torch.no_grad():
        l0 = float((run.sae.encode(x) > 0).sum(-1).float().mean())
    # the threshold of an EMA at rate 0.01 lagged behind the falling smallest kept activation
    assert 3.2 <= l0 <= 4.8, l0
