"""Benchmark cases: what is compared with what, under which aligned conventions.

Each case runs lmxray (the reference, ``role="ref"``) and one peer library in the *same* venv
(so both see the same torch/transformers), on the standard input. ``compare`` says how to align
the two score matrices before taking the max abs difference:

- ``columns``: ``"all"`` (every source column) or ``"prompt"`` (the 40 prompt columns only:
  Captum does not attribute to earlier target tokens);
- ``ref_transform``: applied to lmxray's scores to put them in the peer's convention
  (``"abs"``: Inseq's occlusion returns |delta|; ``"mean_d"``: interpreto averages over the
  hidden dimension instead of summing, i.e. lmxray / d_model);
- ``comparable=False``: the peer computes a different quantity; speed only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

D_MODEL = 512  # bench model hidden size (for the "mean_d" transform)


@dataclass
class Entry:
    library: str  # lmxray | captum | inseq | interpreto | transformer_lens
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    role: str = "peer"  # "ref" for lmxray


@dataclass
class Case:
    name: str
    venv: str  # venv-captum | venv-interpreto | venv-tlens
    title: str
    entries: list[Entry]
    columns: str = "all"
    ref_transform: str | None = None
    comparable: bool = True
    default: bool = True
    notes: str = ""
    timeout_s: int = 1800


def lmx(method: str, **config: Any) -> Entry:
    return Entry("lmxray", method, dict(config), role="ref")


IG = dict(n_steps=50, integration="gausslegendre", reduce="sum")

CASES: list[Case] = [
    Case(
        "ig_captum",
        "venv-captum",
        "IG 50 Gauss-Legendre steps, baseline id 0 on the prompt, earlier targets fixed",
        [
            lmx("integrated_gradients", baseline=0, interpolate="prompt", **IG),
            Entry("captum", "layer_integrated_gradients", {"n_steps": 50, "baseline": 0}),
        ],
        columns="prompt",
        notes="Captum LLMGradientAttribution(LayerIntegratedGradients(wte)); compared on prompt "
        "columns (Captum gives no scores for earlier target tokens); lmxray interpolate='prompt'",
    ),
    Case(
        "ig_inseq",
        "venv-captum",
        "IG 50 Gauss-Legendre steps, <unk> baseline at every prefix position",
        [
            lmx("integrated_gradients", baseline="unk", interpolate="all", _count_flops=True, **IG),
            Entry("inseq", "integrated_gradients", {"n_steps": 50}),
        ],
        notes="Inseq with attributed_fn='probability', logprob=True, "
        "aggregate(aggregate_fn='sum', normalize=False); lmxray interpolate='all' (default)",
    ),
    Case(
        "saliency_inseq",
        "venv-captum",
        "saliency |grad|, L2 over the hidden dimension",
        [lmx("saliency", reduce="l2"), Entry("inseq", "saliency", {"aggregate_fn": "vnorm"})],
        notes="Inseq logprob, aggregate_fn='vnorm', normalize=False; lmxray reduce='l2'",
    ),
    Case(
        "input_x_gradient_inseq",
        "venv-captum",
        "input x gradient, signed sum",
        [
            lmx("input_x_gradient", reduce="sum"),
            Entry("inseq", "input_x_gradient", {"aggregate_fn": "sum"}),
        ],
        notes="Inseq logprob, aggregate_fn='sum', normalize=False",
    ),
    Case(
        "occlusion_captum",
        "venv-captum",
        "occlusion: token replaced by id 0",
        [
            lmx("occlusion", replace="baseline", baseline=0),
            Entry("captum", "feature_ablation", {"baseline": 0}),
        ],
        columns="prompt",
        notes="Captum LLMAttribution(FeatureAblation), KV-cached per step; prompt columns only",
    ),
    Case(
        "occlusion_inseq",
        "venv-captum",
        "occlusion: token embedding replaced by <unk>'s",
        [lmx("occlusion", replace="baseline", baseline="unk"), Entry("inseq", "occlusion")],
        ref_transform="abs",
        notes="Inseq returns |f(x)-f(x')|: compared with |lmxray|",
    ),
    Case(
        "shapley_captum",
        "venv-captum",
        "Shapley value sampling, 25 permutations (speed only)",
        [
            lmx("shapley_sampling", n_samples=25, replace="baseline", baseline=0, sources="prompt"),
            Entry("captum", "shapley_value_sampling", {"n_samples": 25, "baseline": 0}),
        ],
        columns="prompt",
        comparable=False,
        default=False,
        timeout_s=3600,
        notes="sampling estimators with different random streams: speed only",
    ),
    Case(
        "saliency_interpreto",
        "venv-interpreto",
        "saliency, mean |grad| over the hidden dimension",
        [
            lmx("saliency", reduce="sum"),
            Entry("interpreto", "saliency", {"input_x_gradient": False}),
        ],
        ref_transform="mean_d",
        notes="interpreto Saliency(input_x_gradient=False) = mean_d |g|; compared with lmxray "
        "saliency reduce='sum' / d_model; transformers 5.x",
    ),
    Case(
        "ig_interpreto",
        "venv-interpreto",
        "IG 50 steps (speed only)",
        [
            lmx("integrated_gradients", **IG),
            Entry("interpreto", "integrated_gradients", {"n_steps": 50, "batch_size": 50}),
        ],
        comparable=False,
        notes="interpreto IG: mean_d |e(a) * grad| on a zero-baseline path, trapezoid mean; no "
        "(x - baseline) factor, no completeness: a different quantity, speed only",
    ),
    Case(
        "occlusion_interpreto",
        "venv-interpreto",
        "occlusion: token replaced by id 0 (<unk>)",
        [
            lmx("occlusion", replace="baseline", baseline=0),
            Entry("interpreto", "occlusion", {"batch_size": 51, "mask_token": "<unk>"}),
        ],
        notes="interpreto Occlusion with tokenizer.mask_token='<unk>' (else it adds [REPLACE] and "
        "resizes the embeddings); 51 sequences in one batch",
    ),
    Case(
        "kernelshap_interpreto",
        "venv-interpreto",
        "KernelSHAP 100 samples (speed only)",
        [
            lmx("kernel_shap", n_samples=100),
            Entry(
                "interpreto",
                "kernel_shap",
                {"n_samples": 100, "batch_size": 100, "mask_token": "<unk>"},
            ),
        ],
        comparable=False,
        notes="interpreto samples coalition sizes with k(l-k) and fits without kernel weights: speed only",
    ),
    Case(
        "patching_tlens",
        "venv-tlens",
        "residual-stream patching sweep, 6 layers x 50 positions",
        [Entry("transformer_lens", "resid_pre_patching", {"corrupt_id": 0})],
        comparable=False,
        default=False,
        notes="TransformerBridge (compatibility mode, no weight processing); smoke + timing; "
        "lmxray side arrives with its patching API",
    ),
]
