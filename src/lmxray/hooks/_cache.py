"""``ActivationCache`` (activations of one forward by site name, saved as safetensors) and the
input preparation shared by the hook layer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import FormatError, InputError
from ..io import load_tensors, save_tensors
from ..result import Result
from ..sites import LAYER_KINDS

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["ActivationCache", "prepare_inputs", "CACHE_FORMAT"]

CACHE_FORMAT = "lmxray.cache/1"


# --------------------------------------------------------------------------- inputs
def prepare_inputs(model: Model, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """``(input_ids, attention_mask, position_ids, token_id_lists)``, left padded.

    ``inputs``: a prompt string, a list of prompts, a list of token ids, a list of such lists, or
    a 1-D/2-D tensor of ids (unpadded).
    """
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.tolist()
    if isinstance(inputs, str):
        seqs = [model.encode(inputs)]
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(t, int | np.integer) for t in inputs):
        seqs = [[int(t) for t in inputs]]
    elif isinstance(inputs, Sequence) and inputs:
        seqs = []
        for item in inputs:
            if isinstance(item, str):
                seqs.append(model.encode(item))
            elif isinstance(item, Sequence | torch.Tensor | np.ndarray):
                seqs.append([int(t) for t in (item.tolist() if hasattr(item, "tolist") else item)])
            else:
                raise InputError(f"cannot read {type(item).__name__} as a prompt; use text or token ids")
    else:
        raise InputError("nothing to run: pass a prompt, a list of prompts or token ids")
    if any(len(s) == 0 for s in seqs):
        raise InputError("an input is empty after tokenisation; give at least one token")
    model.check_length(max(len(s) for s in seqs))
    ids, mask, pos = model.pad_batch(seqs)
    return ids, mask, pos, seqs


# --------------------------------------------------------------------------- the cache
class ActivationCache(Result, Mapping[str, torch.Tensor]):
    """Activations of one forward, by site name, with the tokens they belong to.

    Tensors are ``[B, L, ...]`` over the left-padded batch (``attn.head_out``:
    ``[B, L, H, d_head]``; ``attn.pattern``: ``[B, H, L, L]``). ``cache[name]`` accepts negative
    layers (``layers.-1.resid_post``); :meth:`stack` gives ``[n_layers, B, L, ...]``;
    :meth:`tokens_of` removes a row's padding.

    Attributes:
        activations: the raw dict.
        input_ids / attention_mask: ``[B, L]``.
        tokens: per row, the token strings (unpadded).
        logits: ``[B, L, vocab]`` or None.
        n_layers: the model's layer count (to resolve negative layers).

    A :class:`~lmxray.result.Result` stored as safetensors (:meth:`save` / :meth:`load`).
    """

    FORMAT: ClassVar[str] = CACHE_FORMAT

    def __init__(self, activations: dict[str, torch.Tensor], *, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, tokens: list[list[str]] | None = None,
                 logits: torch.Tensor | None = None, n_layers: int = 0, model_name: str = "") -> None:
        self.activations = activations
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.tokens = tokens or [[] for _ in range(input_ids.shape[0])]
        self.logits = logits
        self.n_layers = n_layers
        self.model_name = model_name

    # mapping protocol
    def _canon(self, name: str) -> str:
        if name in self.activations:
            return name
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "layers" and parts[1].lstrip("-").isdigit() and self.n_layers:
            return f"layers.{int(parts[1]) % self.n_layers}.{parts[2]}"
        return name

    def __getitem__(self, name: str) -> torch.Tensor:
        key = self._canon(name)
        if key not in self.activations:
            raise KeyError(f"{name!r} is not in this cache; cached: {', '.join(list(self.activations)[:8])}...")
        return self.activations[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def __repr__(self) -> str:
        return (f"ActivationCache({len(self)} sites, batch={self.input_ids.shape[0]}, "
                f"length={self.input_ids.shape[1]})")

    # views
    @property
    def pad(self) -> torch.Tensor:
        """``[B]`` left-padding columns of each row."""
        m = self.attention_mask != 0
        return (m.shape[1] - m.sum(-1)).long()

    def stack(self, kind: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """``[n_layers, B, L, ...]`` of a per-layer kind (``resid_post``, ``attn.out``...)."""
        if kind not in LAYER_KINDS:
            raise InputError(f"stack() takes a per-layer kind ({', '.join(LAYER_KINDS)}), got {kind!r}")
        idx = range(self.n_layers) if layers is None else [int(i) % self.n_layers for i in layers]
        return torch.stack([self[f"layers.{i}.{kind}"] for i in idx])

    def tokens_of(self, name: str, row: int = 0) -> torch.Tensor:
        """The activations of row ``row`` without its padding: ``[L_row, ...]``."""
        t = self[name]
        p = int(self.pad[row])
        return t[row][:, p:, p:] if name.endswith("attn.pattern") else t[row, p:]

    def mean(self, name: str) -> torch.Tensor:
        """Mean over every real token of every row: ``[...]`` (for mean ablation)."""
        t = self[name]
        mask = (self.attention_mask != 0).to(t.device)
        return t[mask].mean(0)

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy on ``device``."""
        return ActivationCache(
            {k: v.to(device) for k, v in self.activations.items()},
            input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            tokens=self.tokens, logits=None if self.logits is None else self.logits.to(device),
            n_layers=self.n_layers, model_name=self.model_name,
        )

    # persistence (safetensors + JSON metadata; never pickle)
    def to_dict(self) -> dict[str, Any]:
        """A JSON summary (model, tokens, each site's shape); the tensors are saved by :meth:`save`."""
        return {
            "model": self.model_name, "n_layers": self.n_layers, "tokens": self.tokens,
            "sites": {k: list(v.shape) for k, v in self.activations.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.safetensors`` file atomically (format ``lmxray.cache/1``)."""
        tensors = {f"act/{k}": v for k, v in self.activations.items()}
        tensors["input_ids"] = self.input_ids
        tensors["attention_mask"] = self.attention_mask
        if self.logits is not None:
            tensors["logits"] = self.logits
        meta = {"model": self.model_name, "n_layers": self.n_layers, "tokens": self.tokens}
        return save_tensors(path, tensors, format=CACHE_FORMAT, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ActivationCache:
        """Read a file written by :meth:`save` (also by lmxray before ``lmxray.io``, whose
        metadata values were plain strings: ``"model": "lmxray-tiny"``, ``"n_layers": "4"``)."""
        tensors, meta = load_tensors(
            path, formats=cls.formats(), what="activation cache", device=str(device)
        )
        if "input_ids" not in tensors or "attention_mask" not in tensors:
            raise FormatError(f"{path} is a malformed {CACHE_FORMAT} file: no input_ids or attention_mask")
        model = meta.get("model", "")
        if not isinstance(model, str):  # an old plain-string name that happens to parse as JSON
            model = json.dumps(model)
        tokens = meta.get("tokens", [])
        if isinstance(tokens, str):  # not JSON
            raise FormatError(f"{path} is a malformed {CACHE_FORMAT} file: tokens are not JSON")
        try:
            n_layers = int(meta.get("n_layers", 0))
        except (TypeError, ValueError):
            raise FormatError(f"{path} is a malformed {CACHE_FORMAT} file: n_layers is not a number") from None
        acts = {k[4:]: v for k, v in tensors.items() if k.startswith("act/")}
        return cls(acts, input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                   tokens=tokens, logits=tensors.get("logits"), n_layers=n_layers, model_name=model)
