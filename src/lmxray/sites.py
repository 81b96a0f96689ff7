"""Named hook sites: where lmxray reads and writes activations, per architecture family, as data.

lmxray never re-implements a network: a *site* is a named place on a native Hugging Face module
where a forward hook reads (or replaces) a tensor. The names are the same for every family:

=========================  ==========================================  ==========================
site                       what it is                                  shape
=========================  ==========================================  ==========================
``embed``                  token-embedding output (``inputs_embeds``)  ``[B, L, d_model]``
``layers.{i}.resid_pre``   residual stream entering block ``i``        ``[B, L, d_model]``
``layers.{i}.attn.out``    attention output added to the residual      ``[B, L, d_model]``
``layers.{i}.attn.pattern``attention probabilities (read only, eager)  ``[B, H, L_q, L_k]``
``layers.{i}.attn.head_out`` per-head attention result before the      ``[B, L, H, d_head]``
                           output projection ("z" in TransformerLens)
``layers.{i}.mlp.hidden``  MLP neurons: input of its down-projection   ``[B, L, d_mlp]``
``layers.{i}.mlp.out``     MLP output added to the residual            ``[B, L, d_model]``
``layers.{i}.resid_post``  residual stream leaving block ``i``         ``[B, L, d_model]``
``final_norm``             output of the final norm                    ``[B, L, d_model]``
``logits``                 output of the unembedding (``lm_head``)     ``[B, L, vocab]``
``<site>.sae``             latents of a sparse autoencoder attached    ``[B, L, d_sae]``
                           at ``<site>`` (:meth:`SiteMap.attach`)
=========================  ==========================================  ==========================

An *attached* site (``layers.2.resid_post.sae``) is a dictionary (an object with ``encode(x)``
and ``decode(f)``, e.g. a :class:`lmxray.concepts.SAE`) read off another site: caching it
records ``encode(x)``; intervening on it edits the latents and adds ``decode(f') - decode(f)``
to the base site, so the SAE's reconstruction error is kept (only the edit changes the model).
The base site itself is recorded before the edit (read the next site to see the edited stream).

Each family is a small table (:data:`FAMILIES`): where the blocks live and, inside a block, which
module plays which role (the TransformerLens-3 ``component_mapping`` / pyvene idea). A model type
not in the table goes through a generic fallback that looks for the usual module names; roles it
cannot find are simply unavailable, and asking for them raises :class:`~lmxray.errors.MethodError`.
``resid_pre = resid_post of the previous block`` and, for sequential or parallel pre-norm blocks,
``resid_post = resid_pre + attn.out + mlp.out`` (checked by :func:`lmxray.hooks.check_additive`).

Example:
    >>> from lmxray.sites import site_map
    >>> sm = site_map(m)                                # doctest: +SKIP
    >>> sm.expand(["resid_post"])[:2]                   # doctest: +SKIP
    ['layers.0.resid_post', 'layers.1.resid_post']
"""

from __future__ import annotations

import fnmatch
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InputError, MethodError

__all__ = [
    "FAMILIES",
    "SITE_KINDS",
    "LAYER_KINDS",
    "Site",
    "SiteMap",
    "site_map",
    "ATTACH_SUFFIX",
]

# --------------------------------------------------------------------------- the data
#: Roles of a family table. Paths are dotted module paths; block roles are relative to a block.
#:   layers: the ModuleList of blocks      embed: token embedding     final_norm: final norm
#:   unembed: modules after the final norm (in order) up to the logits
#:   attn: module whose output[0] is attn.out (its output[1] is the pattern under eager attention)
#:   attn_out: module whose output is attn.out, when not ``attn`` (sandwich norms)
#:   o_proj: module whose *input* is the per-head result            mlp: module whose output is mlp.out
#:   down: module whose *input* is the MLP hidden (neurons)
_LLAMA_LIKE: dict[str, Any] = {
    "layers": "model.layers", "embed": "model.embed_tokens", "final_norm": "model.norm",
    "unembed": ("lm_head",), "attn": "self_attn", "o_proj": "self_attn.o_proj", "mlp": "mlp",
    "down": "mlp.down_proj",
}

FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "layers": "transformer.h", "embed": "transformer.wte", "final_norm": "transformer.ln_f",
        "unembed": ("lm_head",), "attn": "attn", "o_proj": "attn.c_proj", "mlp": "mlp",
        "down": "mlp.c_proj",
    },
    "gpt_neo": {
        "layers": "transformer.h", "embed": "transformer.wte", "final_norm": "transformer.ln_f",
        "unembed": ("lm_head",), "attn": "attn", "o_proj": "attn.attention.out_proj", "mlp": "mlp",
        "down": "mlp.c_proj",
    },
    "gptj": {
        "layers": "transformer.h", "embed": "transformer.wte", "final_norm": "transformer.ln_f",
        "unembed": ("lm_head",), "attn": "attn", "o_proj": "attn.out_proj", "mlp": "mlp",
        "down": "mlp.fc_out",
    },
    "gpt_neox": {
        "layers": "gpt_neox.layers", "embed": "gpt_neox.embed_in",
        "final_norm": "gpt_neox.final_layer_norm", "unembed": ("@output_embeddings",),
        "attn": "attention", "o_proj": "attention.dense", "mlp": "mlp",
        "down": "mlp.dense_4h_to_h",
    },
    "opt": {
        "layers": "model.decoder.layers", "embed": "model.decoder.embed_tokens",
        "final_norm": "model.decoder.final_layer_norm",
        "unembed": ("model.decoder.project_out", "lm_head"), "attn": "self_attn",
        "o_proj": "self_attn.out_proj", "mlp": "fc2", "down": "fc2",
    },
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "starcoder2": {**_LLAMA_LIKE, "down": "mlp.c_proj"},
    "phi": {**_LLAMA_LIKE, "final_norm": "model.final_layernorm", "o_proj": "self_attn.dense",
            "down": "mlp.fc2"},
    "gemma2": {**_LLAMA_LIKE, "attn_out": "post_attention_layernorm",
               "mlp_out": "post_feedforward_layernorm"},
    "olmo2": {**_LLAMA_LIKE, "attn_out": "post_attention_layernorm",
              "mlp_out": "post_feedforward_layernorm"},
}

# candidates for the generic fallback, tried in order
_GENERIC: dict[str, tuple[str, ...]] = {
    "final_norm": ("model.norm", "transformer.ln_f", "model.final_layernorm", "gpt_neox.final_layer_norm",
                   "model.decoder.final_layer_norm", "transformer.norm_f", "model.norm_f",
                   "transformer.final_layernorm", "backbone.norm_f"),
    "attn": ("self_attn", "attn", "attention", "self_attention", "mixer"),
    "o_proj": ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "attention.out_proj"),
    "mlp": ("mlp", "feed_forward", "ffn", "block_sparse_moe"),
    "down": ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "wo"),
}

#: per-layer site kinds, in forward order, and the other sites
LAYER_KINDS = (
    "resid_pre", "attn.pattern", "attn.head_out", "attn.out", "mlp.hidden", "mlp.out", "resid_post",
)
SITE_KINDS = ("embed", *LAYER_KINDS, "final_norm", "logits")
_WRITABLE_EXCEPT = {"attn.pattern"}
_NAME_RE = re.compile(r"^layers\.(-?\d+)\.(.+)$")
#: suffix of the attached-dictionary sites (``layers.2.resid_post.sae``)
ATTACH_SUFFIX = ".sae"


# --------------------------------------------------------------------------- resolved sites
@dataclass(frozen=True)
class Site:
    """One resolved site: which module, which side of it, and how to view the tensor.

    Attributes:
        name: canonical name (``layers.3.attn.out``).
        kind: the name without the layer (``attn.out``).
        layer: block index, or None for ``embed``/``final_norm``/``logits``.
        module: the native module the hook sits on.
        mode: ``"input"`` (forward pre-hook, argument 0) or ``"output"`` (forward hook).
        index: element of a tuple output (``0``; ``1`` for the pattern), or None for a tensor.
        heads: split the last dim into ``(n_heads, d_head)`` for the per-head view.
        writable: whether interventions may replace it.
        attach: for an attached site (``<base>.sae``), the dictionary (``encode``/``decode``).
        base: for an attached site, the name of the site it reads.
    """

    name: str
    kind: str
    layer: int | None
    module: torch.nn.Module = field(repr=False, compare=False, hash=False)
    mode: str
    index: int | None = None
    heads: int | None = None
    writable: bool = True
    attach: Any = field(default=None, repr=False, compare=False, hash=False)
    base: str | None = None


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    if path == "@output_embeddings":
        return root.get_output_embeddings()  # type: ignore[operator]
    mod: Any = root
    for part in path.split("."):
        if mod is None:
            return None
        if part.isdigit() and isinstance(mod, torch.nn.ModuleList | torch.nn.Sequential):
            idx = int(part)
            mod = mod[idx] if idx < len(mod) else None
        else:
            mod = getattr(mod, part, None)
    return mod if isinstance(mod, torch.nn.Module) else None


def _n_heads(config: Any) -> int:
    for key in ("num_attention_heads", "n_head", "num_heads"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 1


class SiteMap:
    """All named sites of one model. Build it with :func:`site_map` (cached per model).

    Attributes:
        family: the family table used (a ``model_type``) or ``"generic"``.
        n_layers / n_heads: block and head counts.
        blocks: the native blocks; ``mlps``: each block's MLP module (its input the normed
            residual, its output ``mlp.out`` or what a sandwich norm takes), ``None`` if not found.
        final_norm / unembed: modules the logit lens applies after a residual state.
    """

    def __init__(self, hf: torch.nn.Module) -> None:
        cfg = hf.config  # type: ignore[attr-defined]
        self.model_type = str(getattr(cfg, "model_type", ""))
        table = FAMILIES.get(self.model_type)
        self.family = self.model_type if table is not None else "generic"
        self.n_heads = _n_heads(cfg)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        blocks = _get(hf, table["layers"]) if table else _find_blocks(hf, cfg)
        if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
            raise MethodError(
                f"cannot find the transformer blocks of {type(hf).__name__}; hook sites are "
                "unavailable for this architecture"
            )
        self.blocks = list(blocks)
        self.n_layers = len(self.blocks)
        embed = _get(hf, table["embed"]) if table else hf.get_input_embeddings()  # type: ignore[operator]
        lm_head = hf.get_output_embeddings()  # type: ignore[operator]
        if table:
            self.final_norm = _get(hf, table["final_norm"])
            unembed = [_get(hf, p) for p in table["unembed"]]
            self.unembed = [m for m in unembed if m is not None]
        else:
            self.final_norm = _first(hf, _GENERIC["final_norm"])
            self.unembed = [lm_head] if lm_head is not None else []
        self._sites: dict[str, Site] = {}
        self.mlps: list[torch.nn.Module | None] = []
        self._add("embed", "embed", None, embed, "output")
        if self.final_norm is not None:
            self._add("final_norm", "final_norm", None, self.final_norm, "output")
        if lm_head is not None:
            self._add("logits", "logits", None, lm_head, "output")
        for i, block in enumerate(self.blocks):
            self._add_block(i, block, table)
        stage = {"embed": 0, "final_norm": 2, "logits": 3}
        order = sorted(self._sites.values(), key=lambda s: (
            stage.get(s.kind, 1), s.layer or 0, LAYER_KINDS.index(s.kind) if s.kind in LAYER_KINDS else 0))
        self._sites = {s.name: s for s in order}
        self._reindex()

    def _reindex(self) -> None:
        base = [n for n, s in self._sites.items() if s.base is None]
        attached = {s.base: n for n, s in self._sites.items() if s.base is not None}
        order: list[str] = []
        for n in base:
            order.append(n)
            if n in attached:
                order.append(attached[n])
        self._sites = {n: self._sites[n] for n in order}
        self._index = {n: k for k, n in enumerate(self._sites)}

    # ------------------------------------------------------------------ attached dictionaries
    def attach(self, base: str, dictionary: Any) -> str:
        """Attach ``dictionary`` (``encode(x) -> f``, ``decode(f) -> x``) at site ``base``;
        returns the new site's name ``<base>.sae`` (an earlier one there is replaced)."""
        site = self[base]
        if site.base is not None or site.kind == "attn.pattern" or site.heads is not None:
            raise InputError(f"cannot attach a dictionary at {site.name}; use a residual, "
                             "attn.out, mlp.out or mlp.hidden site")
        for meth in ("encode", "decode"):
            if not callable(getattr(dictionary, meth, None)):
                raise InputError(f"a dictionary attached at a site needs an {meth}() method; "
                                 f"got {type(dictionary).__name__}")
        name = site.name + ATTACH_SUFFIX
        self._sites[name] = Site(name, site.kind + ATTACH_SUFFIX, site.layer, site.module,
                                 site.mode, site.index, None, True, attach=dictionary,
                                 base=site.name)
        self._reindex()
        return name

    def detach(self, name: str) -> None:
        """Remove the attached site ``name`` (``<base>.sae``); no error when absent."""
        canon = self.canonical(name)
        if canon in self._sites and self._sites[canon].base is not None:
            del self._sites[canon]
            self._reindex()

    def attached(self) -> list[str]:
        """Names of the attached-dictionary sites."""
        return [n for n, s in self._sites.items() if s.base is not None]

    # ------------------------------------------------------------------ building
    def _add(self, name: str, kind: str, layer: int | None, module: Any, mode: str,
             index: int | None = None, heads: int | None = None) -> None:
        if isinstance(module, torch.nn.Module):
            self._sites[name] = Site(name, kind, layer, module, mode, index, heads,
                                     writable=kind not in _WRITABLE_EXCEPT)

    def _add_block(self, i: int, block: torch.nn.Module, table: dict[str, Any] | None) -> None:
        def role(key: str) -> torch.nn.Module | None:
            if table is not None:
                path = table.get(key)
                return _get(block, path) if path else None
            if key in ("attn_out", "mlp_out"):
                return None
            if key in ("o_proj", "down"):
                parent = role("attn" if key == "o_proj" else "mlp")
                if parent is None:
                    return None
                return _first(parent, _GENERIC[key])
            return _first(block, _GENERIC[key])

        p = f"layers.{i}."
        self._add(p + "resid_pre", "resid_pre", i, block, "input")
        self._add(p + "resid_post", "resid_post", i, block, "output", index=0)
        attn = role("attn")
        attn_out = role("attn_out")
        if attn_out is not None:
            self._add(p + "attn.out", "attn.out", i, attn_out, "output", index=0)
        elif attn is not None:
            self._add(p + "attn.out", "attn.out", i, attn, "output", index=0)
        if attn is not None:
            self._add(p + "attn.pattern", "attn.pattern", i, attn, "output", index=1)
        o_proj = role("o_proj")
        if o_proj is not None:
            self._add(p + "attn.head_out", "attn.head_out", i, o_proj, "input", heads=self.n_heads)
        self.mlps.append(role("mlp"))
        mlp_out = role("mlp_out") or role("mlp")
        if mlp_out is not None:
            self._add(p + "mlp.out", "mlp.out", i, mlp_out, "output", index=0)
        down = role("down")
        if down is not None:
            self._add(p + "mlp.hidden", "mlp.hidden", i, down, "input")

    # ------------------------------------------------------------------ queries
    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except (InputError, MethodError, TypeError):
            return False
        return True

    def __getitem__(self, name: str) -> Site:
        canon = self.canonical(name)
        site = self._sites.get(canon)
        if site is None and canon.endswith(ATTACH_SUFFIX):
            raise MethodError(
                f"no sparse autoencoder is attached at {canon[:-len(ATTACH_SUFFIX)]}; attach one "
                "with lmxray.concepts.attach(model, sae) or pass --sae to the command"
            )
        if site is None:
            kind = _NAME_RE.match(canon)
            raise MethodError(
                f"site {canon!r} is not available for {self.model_type or 'this model'} "
                f"({self.family} sites); available kinds: {', '.join(self.kinds())}"
                if kind or canon in SITE_KINDS else f"unknown site {name!r}"
            )
        return site

    def order(self, name: str) -> int:
        """Forward-order index of a canonical site name."""
        return self._index[name]

    def names(self) -> list[str]:
        """Every site name, in forward order."""
        return list(self._sites)

    def kinds(self) -> list[str]:
        """Site kinds this model offers (``embed``, ``resid_pre``, ``attn.out``...)."""
        have = {s.kind for s in self._sites.values()}
        return [k for k in SITE_KINDS if k in have]

    def canonical(self, name: str) -> str:
        """``layers.-1.resid_post`` → ``layers.{n-1}.resid_post``; checks the layer range."""
        if not isinstance(name, str):
            raise InputError(f"a site name must be a string, got {type(name).__name__}")
        name = name.strip()
        if name.endswith(ATTACH_SUFFIX) and name != ATTACH_SUFFIX:
            return self.canonical(name[: -len(ATTACH_SUFFIX)]) + ATTACH_SUFFIX
        m = _NAME_RE.match(name)
        if not m:
            if name in self._sites or name in SITE_KINDS:
                return name
            raise InputError(
                f"unknown site {name!r}; use embed, final_norm, logits or layers.<i>.<kind> with "
                f"kind in {', '.join(LAYER_KINDS)}"
            )
        layer, kind = int(m.group(1)), m.group(2)
        if kind not in LAYER_KINDS:
            raise InputError(f"unknown site kind {kind!r} in {name!r}; use one of {', '.join(LAYER_KINDS)}")
        if not -self.n_layers <= layer < self.n_layers:
            raise InputError(
                f"layer {layer} in {name!r} is out of range; the model has {self.n_layers} layers"
            )
        return f"layers.{layer % self.n_layers}.{kind}"

    def name(self, kind: str, layer: int | None = None) -> str:
        """The site name of ``kind`` at ``layer`` (``name("attn.out", 3)``)."""
        if kind not in SITE_KINDS:
            raise InputError(f"unknown site kind {kind!r}; use one of {', '.join(SITE_KINDS)}")
        if kind in LAYER_KINDS:
            if layer is None:
                raise InputError(f"site kind {kind!r} needs a layer")
            return self.canonical(f"layers.{layer}.{kind}")
        return kind

    def expand(self, patterns: str | Iterable[str] | None) -> list[str]:
        """Site names matching ``patterns``, in forward order.

        A pattern is a site name (``layers.2.attn.out``, negative layers allowed), a kind for
        every layer (``resid_post``), a glob (``layers.*.mlp.out``), or ``"all"``.
        """
        if patterns is None:
            return []
        if isinstance(patterns, str):
            patterns = [patterns]
        chosen: set[str] = set()
        for pat in patterns:
            if not isinstance(pat, str) or not pat.strip():
                raise InputError(f"bad site pattern {pat!r}; use a site name, a kind or a glob")
            pat = pat.strip()
            if pat == "all":
                chosen.update(self._sites)
            elif pat in LAYER_KINDS:
                hits = [n for n, s in self._sites.items() if s.kind == pat]
                if not hits:
                    self[f"layers.0.{pat}"]  # raises the "not available" error
                chosen.update(hits)
            elif any(ch in pat for ch in "*?["):
                hits = [n for n in self._sites if fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    raise InputError(f"site pattern {pat!r} matches no site of this model")
                chosen.update(hits)
            else:
                chosen.add(self[pat].name)
        return [n for n in self._sites if n in chosen]

    def by_layer(self, kind: str) -> list[str]:
        """``[layers.0.<kind>, ..., layers.{n-1}.<kind>]`` (raises when unavailable)."""
        return [self[f"layers.{i}.{kind}"].name for i in range(self.n_layers)]


def _first(root: torch.nn.Module, candidates: Sequence[str]) -> torch.nn.Module | None:
    for path in candidates:
        mod = _get(root, path)
        if mod is not None:
            return mod
    return None


def _find_blocks(hf: torch.nn.Module, cfg: Any) -> torch.nn.ModuleList | None:
    n = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            n = v
            break
    best = None
    for _, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            best = mod
            break
    return best


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, SiteMap] = weakref.WeakKeyDictionary()


def site_map(model: Any) -> SiteMap:
    """The :class:`SiteMap` of a :class:`~lmxray.model.Model` or native HF model (cached)."""
    hf = getattr(model, "hf", model)
    if not isinstance(hf, torch.nn.Module):
        raise InputError(f"expected an lmxray Model or a torch module, got {type(model).__name__}")
    sm = _CACHE.get(hf)
    if sm is None:
        sm = SiteMap(hf)
        _CACHE[hf] = sm
    return sm
