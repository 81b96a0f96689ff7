"""interpreto 0.5.2 on the bench model (venv-interpreto: transformers 5.x, nnsight).

Settings: ``granularity=Granularity.TOKEN``, ``inference_mode=InferenceModes.LOG_SOFTMAX``
(log-probability of each forced target token), target passed as text (interpreto prepends a
space when missing; ours has one), prompt re-tokenised by interpreto (no BOS with this tokenizer).

Conventions read from its source (site-packages/interpreto/attributions):
- gradient methods: one forward over prompt+target, then one ``autograd.grad`` per target step;
  per-token score = ``mean_d |g|`` (``input_x_gradient=False``) or ``mean_d |x * g|`` (True):
  unsigned, averaged (not summed) over the hidden dimension.
- IntegratedGradients: linear path from ``baseline`` (None -> zeros) with n_perturbations points,
  ``mean_d |e(alpha) * grad(e(alpha))|`` at each point, trapezoidal mean: no ``(x - baseline)``
  factor, so no completeness; not comparable numerically (speed only).
- Occlusion / KernelShap replace tokens by ``tokenizer.mask_token_id``; when the tokenizer has
  none, interpreto adds a ``[REPLACE]`` token and resizes the model's embeddings (a fresh,
  randomly initialised row). We set ``tokenizer.mask_token = "<unk>"`` (config
  ``mask_token``) so that it replaces by id 0 like Captum and lmxray's ``replace="baseline"``.
  Occlusion perturbs every source token (prompt and target), score = f(x) - f(x'),
  teacher-forced, NaN above the causal diagonal.
"""

from __future__ import annotations

from typing import Any

import _common as C


def build(method: str, cfg: dict[str, Any]):
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    import interpreto
    from interpreto import Granularity
    from interpreto.attributions import InferenceModes

    model, tok = C.load_hf()
    C.check_tokens(tok)
    mask_token = cfg.get("mask_token", "<unk>")
    if mask_token:
        tok.mask_token = mask_token
    n_vocab0 = model.get_input_embeddings().weight.shape[0]
    common = {
        "model": model,
        "tokenizer": tok,
        "granularity": Granularity.TOKEN,
        "inference_mode": InferenceModes.LOG_SOFTMAX,
        "batch_size": int(cfg.get("batch_size", 4)),
    }
    if method == "saliency":
        ex = interpreto.Saliency(
            input_x_gradient=bool(cfg.get("input_x_gradient", False)), **common
        )
    elif method == "integrated_gradients":
        ex = interpreto.IntegratedGradients(n_perturbations=int(cfg.get("n_steps", 50)), **common)
    elif method == "occlusion":
        ex = interpreto.Occlusion(**common)
    elif method == "kernel_shap":
        ex = interpreto.KernelShap(n_perturbations=int(cfg.get("n_samples", 100)), **common)
    else:
        raise ValueError(f"unknown interpreto method {method}")
    resized = model.get_input_embeddings().weight.shape[0] != n_vocab0

    def call():
        torch.manual_seed(int(cfg.get("seed", 0)))
        out = ex.explain(C.PROMPT, targets=C.TARGET)
        a = out[0].attributions.detach().cpu().numpy().astype(np.float64)
        assert a.shape == (C.N_TARGET, C.N_SOURCES), a.shape
        return a

    def after(scores):
        return {"embeddings_resized": bool(resized), "mask_token": mask_token}

    return call, {"notes": "", "after": after}


if __name__ == "__main__":
    C.main("interpreto", build, dists=("interpreto", "nnsight"))
