"""Concepts: sparse autoencoders (SAEs) and concept activation vectors (CAVs, TCAV).

- :mod:`~lmxray.concepts.sae`: the SAE module (TopK, BatchTopK, JumpReLU, ReLU + L1) and
  SAELens' on-disk format (``SAE.save``, :func:`load_sae`);
- :mod:`~lmxray.concepts.train`: training on activations streamed from a corpus
  (:func:`train_sae`, :func:`fit_sae` on any activation source);
- :mod:`~lmxray.concepts.metrics`: :func:`attach` (latents as the site ``<site>.sae``), L0,
  variance explained, CE loss recovered, dead/dense latents (:func:`evaluate_sae`);
- :mod:`~lmxray.concepts.features`: feature edits (:func:`feature_op`), detectors (AUROC),
  attribution to latents (:func:`feature_attribution`) and of a latent to input tokens
  (:func:`attribute_feature`), the feature view (:func:`feature_view`);
- :mod:`~lmxray.concepts.known`: the zoo's known concepts against latents (:func:`scan_concepts`,
  :func:`marker_ablation`, :func:`continent_tcav`);
- :mod:`~lmxray.concepts.cav`: CAVs and TCAV with the two-sided test over random CAVs.

Example::

    import lmxray
    from lmxray import concepts
    m = lmxray.load()
    run = concepts.train_sae(m, "layers.2.resid_post", concepts.TrainConfig(steps=50))
    site = concepts.attach(m, run.sae)                  # "layers.2.resid_post.sae"
    f = m.run("The capital of France is", cache=[site])[site]     # [1, L, d_sae]
    with m.intervene(concepts.feature_op(m, site, 7, "ablate")):
        m.logits("The capital of France is")
"""

from __future__ import annotations

from .cav import tcav, train_cav
from .features import (
    attribute_feature,
    auroc_per_feature,
    best_detector,
    feature_attribution,
    feature_op,
    feature_view,
    latents,
)
from .known import continent_tcav, marker_ablation, scan_concepts
from .metrics import attach, evaluate_sae
from .results import ConceptScan, FeatureView, SAEEval, TCAVResult
from .sae import KINDS, SAE, SAEConfig, load_sae
from .train import TrainConfig, TrainRun, fit_sae, train_sae

__all__ = ["KINDS", "SAE", "SAEConfig", "load_sae", "TrainConfig", "TrainRun", "fit_sae",
           "train_sae", "attach", "evaluate_sae", "feature_op", "latents", "feature_view",
           "feature_attribution", "attribute_feature", "auroc_per_feature", "best_detector",
           "scan_concepts", "marker_ablation", "continent_tcav", "tcav", "train_cav",
           "SAEEval", "FeatureView", "ConceptScan", "TCAVResult"]
