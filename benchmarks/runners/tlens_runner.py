"""TransformerLens 4.x (TransformerBridge) on the bench GPT-2 (venv-tlens, transformers 5.x).

``HookedTransformer`` was removed in 4.0; the model is booted with
``TransformerBridge.boot_transformers(path, hf_model=..., tokenizer=...)`` and
``enable_compatibility_mode(no_processing=True)`` (legacy hook names such as
``blocks.{l}.hook_resid_pre``, but raw HF weights: no LayerNorm folding or weight centring, so the
logits equal plain HF's).

Method ``resid_pre_patching``: ``transformer_lens.patching.get_act_patch_resid_pre`` over
n_layers x 50 positions (one forward per (layer, position)). Clean run = prompt + target;
corrupted run = the same with every prompt token replaced by ``<unk>`` (id 0) (config
``corrupt_id``). Metric = sum of the 10 target log-probabilities. Output [n_layers, 50].
"""

from __future__ import annotations

from typing import Any

import _common as C


def build(method: str, cfg: dict[str, Any]):
    import numpy as np
    import torch
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    if method != "resid_pre_patching":
        raise ValueError(f"unknown tlens method {method}")
    hf, tok = C.load_hf()
    p, t = C.check_tokens(tok)
    bridge = TransformerBridge.boot_transformers(
        str(C.MODEL_DIR), hf_model=hf, tokenizer=tok, device="cpu"
    )
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    clean = torch.tensor([p + t])
    corrupt_id = int(cfg.get("corrupt_id", 0))
    corrupted = clean.clone()
    corrupted[0, : C.N_PROMPT] = corrupt_id
    tgt = clean[0, C.N_PROMPT :]
    pos = torch.arange(C.N_PROMPT - 1, C.N_SOURCES - 1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[0, pos].float(), dim=-1)
        return lp[torch.arange(C.N_TARGET), tgt].sum()

    with torch.no_grad():
        ref_logits = hf(clean).logits
        _, clean_cache = bridge.run_with_cache(clean)
        br_logits = bridge(clean)
    logit_diff = float((ref_logits - br_logits).abs().max())

    def call():
        with torch.no_grad():
            r = patching.get_act_patch_resid_pre(bridge, corrupted, clean_cache, metric)
        return r.detach().cpu().numpy()

    def after(scores):
        with torch.no_grad():
            return {
                "metric_clean": float(metric(bridge(clean))),
                "metric_corrupted": float(metric(bridge(corrupted))),
                "bridge_vs_hf_max_abs_logit_diff": logit_diff,
                "shape": list(np.shape(scores)),
            }

    return call, {
        "notes": "resid_pre patching sweep, metric = sum of target log-probs",
        "expect_shape": [int(hf.config.n_layer), C.N_SOURCES],
        "after": after,
    }


if __name__ == "__main__":
    C.main("transformer_lens", build, dists=("transformer-lens",))
