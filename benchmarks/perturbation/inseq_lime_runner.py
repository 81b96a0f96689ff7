"""Inseq 0.7.1 ``lime`` on the bench model (venv-captum), for the perturbation benchmark.

Inseq runs Captum's ``Lime`` once per target step (``n_samples=50`` perturbations of the prefix by
default, ``perturbations_per_eval=1``: one forward each), with a token-masking sampler
(``mask_prob=0.3``), its own similarity kernel and a ridge surrogate; log-prob target
(``attributed_fn="probability", logprob=True``). Its ``target_attributions`` come per hidden
dimension (``[n_prefix, n_targets, d_model]``, the token coefficient repeated); we average the
last axis and transpose to ``[T, S]``. Speed comparison only (a different sampler and kernel).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))
import _common as C  # noqa: E402


def build(method: str, cfg: dict[str, Any]):
    import logging

    import inseq
    import torch

    if method != "lime":
        raise ValueError("this runner runs inseq lime only")
    logging.getLogger("inseq").setLevel(logging.ERROR)
    model, tok = C.load_hf()
    C.check_tokens(tok)
    im = inseq.load_model(model, "lime", tokenizer=tok)
    kw: dict[str, Any] = {"attributed_fn": "probability", "logprob": True}
    if "n_samples" in cfg:
        kw["n_samples"] = int(cfg["n_samples"])

    def call():
        torch.manual_seed(int(cfg.get("seed", 0)))
        out = im.attribute(input_texts=C.PROMPT, generated_texts=C.PROMPT + C.TARGET,
                           show_progress=False, **kw)
        ta = out.sequence_attributions[0].target_attributions.detach().cpu().numpy()
        if ta.ndim == 3:
            ta = ta.mean(-1)
        a = ta.T
        assert a.shape == (C.N_TARGET, C.N_SOURCES), a.shape
        return a

    return call, {"notes": "inseq lime, n_samples per step = " + str(kw.get("n_samples", 50))}


if __name__ == "__main__":
    C.main("inseq", build, dists=("inseq", "captum"))
