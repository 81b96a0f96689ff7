"""Concepts: sparse autoencoders (SAEs) and concept activation vectors (CAVs, TCAV).

- :mod:`~lmxray.concepts.sae`: the SAE module (TopK, BatchTopK, JumpReLU, ReLU + L1) and
  SAELens' on-disk format (``SAE.save``, :func:`load_sae`);
- :mod:`~lmxray.concepts.train`: training on activations streamed from a corpus
  (:func:`train_sae`, :func:`fit_sae` on any activation source);
- :mod:`~lmxray.concepts.metrics`: L0, variance explained, CE loss recovered, dead/dense latents;
- :mod:`~lmxray.concepts.features`: SAE latents as sites (``layers.2.resid_post.sae``),
  feature detectors (AUROC), attribution to and from features, the feature view;
- :mod:`~lmxray.concepts.cav`: CAVs and TCAV with the two-sided test over random CAVs.
"""

from __future__ import annotations

from .sae import KINDS, SAE, SAEConfig, load_sae
from .train import TrainConfig, TrainRun, fit_sae, train_sae

__all__ = ["KINDS", "SAE", "SAEConfig", "load_sae", "TrainConfig", "TrainRun", "fit_sae",
           "train_sae"]
