"""Inseq 0.7.1 on the bench model (run in venv-captum: transformers 4.57.6).

Conventions read from inseq's source (site-packages/inseq):
- ``generated_texts`` = prompt + target (decoder-only constrained decoding); the full text is
  tokenized once and sliced per step, so every prefix token (prompt and earlier targets) is an
  input of the attributed forward.
- gradient methods attribute w.r.t. ``inputs_embeds`` (token embeddings; position embeddings are
  added inside the model); IG uses Captum ``IntegratedGradients`` (Gauss-Legendre, n_steps, one
  batch) with baseline = ``<unk>`` embedding at every position (EOS kept as EOS), so earlier
  target tokens are interpolated too.
- the attributed function defaults to probability: we pass ``attributed_fn="probability"`` and
  ``logprob=True`` to get log-probabilities.
- default aggregation is ``vnorm`` (L2 over the hidden dim) **followed by normalisation** of every
  step to sum 1; we aggregate with ``aggregate(aggregator="scores", aggregate_fn=..., normalize=False)``:
  ``sum`` (signed) for IG and input x gradient, ``vnorm`` for saliency (config ``aggregate_fn``).
- occlusion: Captum ``Occlusion`` on embeddings, window (1, d_model), baseline = ``<unk>``
  embedding, and inseq returns ``abs(f(x) - f(x'))``.
Inseq's ``target_attributions`` are [n_prefix_tokens, n_targets]; we transpose to [T, S].
"""

from __future__ import annotations

from typing import Any

import _common as C

DEFAULT_AGG = {
    "integrated_gradients": "sum",
    "input_x_gradient": "sum",
    "saliency": "vnorm",
    "occlusion": None,
}


def build(method: str, cfg: dict[str, Any]):
    import logging

    import inseq
    import numpy as np

    logging.getLogger("inseq").setLevel(logging.ERROR)
    model, tok = C.load_hf()
    C.check_tokens(tok)
    im = inseq.load_model(model, method, tokenizer=tok)
    agg = cfg.get("aggregate_fn", DEFAULT_AGG.get(method))
    kw: dict[str, Any] = {"attributed_fn": "probability", "logprob": True}
    if method == "integrated_gradients":
        kw["n_steps"] = int(cfg.get("n_steps", 50))
        kw["internal_batch_size"] = cfg.get("internal_batch_size")  # None: all steps in one batch

    def call():
        out = im.attribute(
            input_texts=C.PROMPT,
            generated_texts=C.PROMPT + C.TARGET,
            show_progress=False,
            **kw,
        )
        seq = out.sequence_attributions[0]
        if agg is not None:
            seq = seq.aggregate(aggregator="scores", aggregate_fn=agg, normalize=False)
        ta = seq.target_attributions  # [n_prefix (=50), n_targets (=10)]
        a = ta.detach().cpu().numpy().T
        assert a.shape == (C.N_TARGET, C.N_SOURCES), a.shape
        return a

    notes = {
        "integrated_gradients": "logprob, <unk> baseline at all prefix positions, signed sum",
        "input_x_gradient": "logprob, signed sum",
        "saliency": "logprob, L2 over hidden (vnorm, normalize=False)",
        "occlusion": "logprob, |f(x)-f(x')|, <unk> embedding baseline",
    }.get(method, "")

    def after(scores):
        # consistency of inseq's own NaN pattern with the causal mask
        ref = np.isnan(C.causal_mask(np.zeros_like(scores)))
        return {"nan_pattern_causal": bool((np.isnan(scores) == ref).all())}

    return call, {"notes": notes, "after": after}


if __name__ == "__main__":
    C.main("inseq", build, dists=("inseq", "captum"))
