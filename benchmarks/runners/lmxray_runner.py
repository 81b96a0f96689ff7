"""lmxray through its public API (``lmxray.load`` + ``Model.attribute``), in whichever venv the
peer of the case lives in (so lmxray is timed beside Captum/Inseq on transformers 4.57.6 and
beside interpreto on transformers 5.x).

``--method`` is an lmxray method name; ``--config`` holds the keyword arguments passed to
``Model.attribute`` (e.g. ``{"n_steps": 50, "baseline": 0, "interpolate": "prompt"}``), plus
runner-only keys starting with ``_``:

- ``_count_flops``: after timing, run the call once under ``torch.utils.flop_counter.FlopCounterMode``
  and report the executed FLOPs (matmuls, attention; forward and backward), and the nominal count
  ``n_steps * (1 + T) * 2 * n_params * L`` (IG: one forward per step serves all T targets, one
  activation-only VJP per target ~ one forward).
"""

from __future__ import annotations

from typing import Any

import _common as C


def build(method: str, cfg: dict[str, Any]):
    import numpy as np

    import lmxray

    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    m = lmxray.load(str(C.MODEL_DIR))
    C.check_tokens(m.tokenizer)
    if method not in lmxray.methods():
        raise NotImplementedError(
            f"lmxray has no method {method!r} yet (has: {sorted(lmxray.methods())})"
        )
    last: dict[str, Any] = {}

    def call():
        a = m.attribute(C.PROMPT, target=C.TARGET, method=method, **kwargs)
        last["a"] = a
        return np.asarray(a.scores, dtype=np.float64)

    def after(scores):
        a = last["a"]
        extra: dict[str, Any] = {
            "source_tokens": list(a.source_tokens),
            "target_scores": np.asarray(a.target_scores, dtype=float).tolist(),
            "info_passes": a.info.get("passes"),
        }
        assert len(a.source_tokens) == C.N_SOURCES, len(a.source_tokens)
        if "convergence_delta" in a.info:
            extra["max_abs_convergence_delta"] = float(np.max(np.abs(a.info["convergence_delta"])))
        if cfg.get("_count_flops"):
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                m.attribute(C.PROMPT, target=C.TARGET, method=method, **kwargs)
            n_params = sum(p.numel() for p in m.hf.parameters())
            n_steps = int(kwargs.get("n_steps", 50))
            extra["flops_counted"] = int(fc.get_total_flops())
            extra["flops_nominal"] = int(n_steps * (1 + C.N_TARGET) * 2 * n_params * C.N_SOURCES)
            extra["n_params"] = int(n_params)
        return extra

    return call, {"notes": "", "after": after}


if __name__ == "__main__":
    C.main("lmxray", build, dists=("lmxray",))
