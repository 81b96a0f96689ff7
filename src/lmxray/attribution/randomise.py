"""Randomised copies of a model (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv:1810.03292): the weights re-drawn, stage by stage, on a deep copy (the user's model is never
touched).

Each tensor is re-drawn from a Gaussian with that tensor's own mean and standard deviation
(seeded), so activations keep their scale; constant tensors (norm gains, zero biases) keep their
value, as a re-initialisation would give them. Used by :mod:`lmxray.evaluate.sanity` (cascading
and independent tests) and :mod:`lmxray.attribution.verify` (the randomised-model null).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from ..errors import InputError
from ..model import Model

__all__ = ["randomisation_stages", "redraw", "randomised_copy"]


def _decoder_layers(hf: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    """The ModuleList of decoder layers: the one with ``n_layers`` entries holding most weights."""
    best, best_size = None, -1
    for _, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers:
            size = sum(p.numel() for p in mod.parameters())
            if size > best_size:
                best, best_size = mod, size
    if best is None:
        raise InputError(f"cannot find the {n_layers} decoder layers of {type(hf).__name__}")
    return best


def randomisation_stages(hf: torch.nn.Module, n_layers: int) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Cascade order, top first: ``lm_head`` (skipped when tied to the input embeddings),
    ``layer.{L-1}`` ... ``layer.0``, then ``embeddings`` (every parameter left)."""
    layers = _decoder_layers(hf, n_layers)
    stages: list[tuple[str, list[torch.nn.Parameter]]] = []
    seen: set[int] = set()
    head = hf.get_output_embeddings()  # type: ignore[operator]
    emb = hf.get_input_embeddings()  # type: ignore[operator]
    if head is not None and head.weight is not emb.weight:
        params = list(head.parameters())
        stages.append(("lm_head", params))
        seen.update(id(p) for p in params)
    for i in range(len(layers) - 1, -1, -1):
        params = [p for p in layers[i].parameters() if id(p) not in seen]
        stages.append((f"layer.{i}", params))
        seen.update(id(p) for p in params)
    rest = [p for p in hf.parameters() if id(p) not in seen]
    stages.append(("embeddings", rest))
    return stages


@torch.no_grad()
def redraw(params: Sequence[torch.nn.Parameter], gen: torch.Generator) -> None:
    for p in params:
        if p.numel() < 2:
            continue
        data = p.detach().float()
        std = float(data.std())
        if std == 0.0:
            continue
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        p.copy_((noise * std + float(data.mean())).to(p.dtype))


def randomised_copy(model: Model, seed: int = 0) -> Model:
    """A deep copy of ``model`` with every stage re-drawn (the full cascade), in eval mode."""
    clone = copy.deepcopy(model.hf)
    clone.eval()
    gen = torch.Generator().manual_seed(int(seed))
    for _, params in randomisation_stages(clone, model.n_layers):
        redraw(params, gen)
    return Model(clone, model.tokenizer, name=f"{model.name} (randomised)")
