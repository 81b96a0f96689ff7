"""Result types of the concepts package (JSON, loaded without executing code; views in
:mod:`lmxray.render.concepts`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import FormatError
from ..result import Result

__all__ = ["SAEEval", "FeatureView", "TCAVResult", "ConceptScan"]


class _Fields(Result):
    """A dataclass result whose JSON is its fields."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **{f.name: getattr(self, f.name)
                                          for f in dataclasses.fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise FormatError(f"a {cls.FORMAT} file needs {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SAEEval(_Fields):
    """Quality of an SAE at its site: sparsity, reconstruction and the model's loss with the SAE
    spliced in.

    Attributes:
        site / model / kind / d_sae: what was measured.
        tokens: evaluation tokens (BOS excluded).
        l0: mean active latents per token. fve: fraction of variance explained (pooled).
        ce_clean / ce_sae / ce_zero: next-token loss (nats) of the model, with the site replaced
            by the SAE's reconstruction, and zero-ablated (BOS positions kept clean).
        ce_recovered: ``(ce_zero − ce_sae) / (ce_zero − ce_clean)``.
        dead / dense: share of latents that never fire / fire on more than 10% of tokens.
        log_freq: per-latent log10 firing frequency (−10 for never), for the density histogram.
    """

    FORMAT: ClassVar[str] = "lmxray.sae_eval/1"
    site: str
    model: str
    kind: str
    d_sae: int
    tokens: int
    l0: float
    fve: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    dead: float
    dense: float
    log_freq: list[float] = field(default_factory=list)


@dataclass
class FeatureView(_Fields):
    """One latent: top-activating contexts, activation histogram, logit effects.

    Attributes:
        site / feature: which latent.
        contexts: ``{"tokens": [...], "acts": [...], "max": float, "at": int}`` per context,
            best first (``at``: the position of the maximum).
        hist_edges / hist_counts: histogram of the latent's non-zero activations.
        freq: share of tokens where it fires.
        promoted / suppressed: ``[token, logit effect]`` of the decoder row read through the
            unembedding (top and bottom).
    """

    FORMAT: ClassVar[str] = "lmxray.feature_view/1"
    site: str
    feature: int
    contexts: list[dict[str, Any]]
    hist_edges: list[float]
    hist_counts: list[int]
    freq: float
    promoted: list[list[Any]]
    suppressed: list[list[Any]]
    label: str = ""


@dataclass
class ConceptScan(_Fields):
    """Known concepts against SAE latents: for each concept the best single latent as a detector.

    ``rows``: ``{"concept", "feature", "auroc", "positives", "negatives"}`` per concept.
    """

    FORMAT: ClassVar[str] = "lmxray.concept_scan/1"
    site: str
    rows: list[dict[str, Any]]


@dataclass
class TCAVResult(_Fields):
    """TCAV scores of concepts for one class, with Kim et al.'s test against random concepts.

    ``rows``: per concept ``{"concept", "score", "scores", "random_scores", "p_value",
    "p_corrected", "significant", "cav_accuracy"}`` (``scores``: one per CAV run;
    ``random_scores``: one per random concept; ``p_corrected``: Bonferroni over ``tests``, absent
    in files of older versions). ``significant``: ``p_value < alpha / tests``.
    """

    FORMAT: ClassVar[str] = "lmxray.tcav/1"
    site: str
    target: str
    rows: list[dict[str, Any]]
    alpha: float = 0.05
    tests: int = 1
