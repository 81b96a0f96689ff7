"""lmxray perturbation methods on the bench model, with the numbers the perturbation benchmark
reports beside the time (run by ``benchmarks/perturbation/bench.py`` through the harness in
``benchmarks/run.py``, in the venv of the peer it is compared with).

``--config`` holds the keyword arguments of ``Model.attribute`` plus runner-only keys:

- ``_prefix``: ``"auto"`` (default), ``"on"`` or ``"off"``: the prefix KV-cache mode
  (:func:`lmxray.attribution._prefix.prefix_cache`); ``"off"`` scores every perturbed sequence in
  full, the baseline that shows what reuse saves.

Extras written to ``result.json`` (outside the timed region): the token positions computed vs a
plain batched scorer (``forward_tokens``), the number of sequences scored, and for Shapley
methods the largest efficiency gap ``|sum_s phi[t, s] - (f_t(x) - f_t(empty))|`` over steps.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))
import _common as C  # noqa: E402


def build(method: str, cfg: dict[str, Any]):
    import numpy as np

    import lmxray
    from lmxray.attribution._prefix import count_forward_tokens, prefix_cache

    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    mode = cfg.get("_prefix", "auto")
    m = lmxray.load(str(C.MODEL_DIR))
    C.check_tokens(m.tokenizer)
    last: dict[str, Any] = {}

    def call():
        with prefix_cache(mode):
            a = m.attribute(C.PROMPT, target=C.TARGET, method=method, **kwargs)
        last["a"] = a
        return np.asarray(a.scores, dtype=np.float64)

    def after(scores):
        a = last["a"]
        with prefix_cache(mode), count_forward_tokens() as st:
            m.attribute(C.PROMPT, target=C.TARGET, method=method, **kwargs)
        extra: dict[str, Any] = {
            "prefix_mode": mode,
            "forward_tokens": st.as_dict(),
            "target_scores": np.asarray(a.target_scores, dtype=float).tolist(),
            "info_passes": a.info.get("passes"),
        }
        if "empty_value" in a.info:
            gap = np.nansum(a.scores, axis=1) - (a.target_scores - np.asarray(a.info["empty_value"]))
            extra["efficiency_gap"] = float(np.abs(gap).max())
        for key in ("exact", "n_coalitions", "n_players"):
            if key in a.info:
                extra[key] = a.info[key]
        return extra

    return call, {"notes": f"prefix cache {mode}", "after": after}


if __name__ == "__main__":
    C.main("lmxray", build, dists=("lmxray",))
