"""Captum 0.9.0 LLM wrappers on the bench model (run in venv-captum: transformers 4.57.6).

Methods (``--method``):
- ``layer_integrated_gradients``: ``LLMGradientAttribution(LayerIntegratedGradients(wte))``,
  50 Gauss-Legendre steps in one batch, baseline = token id 0 at prompt positions, earlier target
  tokens fixed (they are appended after the interpretable input), log-prob target, signed sum
  over the hidden dimension.
- ``feature_ablation``: ``LLMAttribution(FeatureAblation)``: token i replaced by baseline id 0,
  score = logp(x) - logp(x'), default KV-cached token-by-token forward.
- ``shapley_value_sampling``: ``LLMAttribution(ShapleyValueSampling)``, n_samples=25.

Captum attributes to prompt tokens only: its [10, 40] rows go into the first 40 columns, the
target columns stay NaN.
"""

from __future__ import annotations

from typing import Any

import _common as C


def build(method: str, cfg: dict[str, Any]):
    import numpy as np
    import torch
    from captum.attr import (
        FeatureAblation,
        LayerIntegratedGradients,
        LLMAttribution,
        LLMGradientAttribution,
        ShapleyValueSampling,
        TextTokenInput,
    )

    model, tok = C.load_hf()
    C.check_tokens(tok)
    baseline = int(cfg.get("baseline", 0))
    inp = TextTokenInput(C.PROMPT, tok, baselines=baseline)
    notes = "prompt columns only (Captum does not attribute to earlier target tokens)"

    if method == "layer_integrated_gradients":
        n_steps = int(cfg.get("n_steps", 50))
        llm = LLMGradientAttribution(
            LayerIntegratedGradients(model, model.get_input_embeddings()), tok
        )

        def call():
            r = llm.attribute(inp, target=C.TARGET, n_steps=n_steps, method="gausslegendre")
            return C.full_matrix(r.token_attr.detach().cpu().numpy())

    elif method in ("feature_ablation", "shapley_value_sampling"):
        if method == "feature_ablation":
            llm = LLMAttribution(FeatureAblation(model), tok)
            kw: dict[str, Any] = {}
        else:
            llm = LLMAttribution(ShapleyValueSampling(model), tok)
            kw = {"n_samples": int(cfg.get("n_samples", 25))}
        use_cache = bool(cfg.get("use_cached_outputs", True))

        def call():
            torch.manual_seed(int(cfg.get("seed", 0)))
            r = llm.attribute(inp, target=C.TARGET, use_cached_outputs=use_cache, **kw)
            return C.full_matrix(r.token_attr.detach().cpu().numpy())

    else:
        raise ValueError(f"unknown captum method {method}")

    def after(scores):
        return {"finite_cells": int(np.isfinite(scores).sum())}

    return call, {"notes": notes, "after": after}


if __name__ == "__main__":
    C.main("captum", build, dists=("captum",))
