"""Output-preserving perturbations of an input, and how much an attribution moves under them.

Used by :mod:`lmxray.attribution.verify`. Three perturbations (each checked to keep the output:
every target step's log-probability moves by at most ``tolerance`` nats, else it is not used):

- ``swap``: a low-importance prompt token (not among the top-k by ``|score|``) is replaced by a
  token of the same *shape class* (same leading space, letters / capitalised / digits /
  punctuation, and length within 2): the closest a model-agnostic check gets to "another word of
  the same kind". Candidates are scored in one batch; the swap that moves the output least wins.
- ``whitespace``: a space is doubled before a low-importance word, so the prompt is tokenised
  differently (an extra whitespace token); scores are compared on the tokens both share.
- ``noise`` (gradient methods): Gaussian noise of ``noise`` times the embedding matrix's
  standard deviation is added to every input embedding (a hook on the embedding module).

Comparisons (Yeh et al. 2019, max-sensitivity; Alvarez-Melis & Jaakkola 2018): Spearman rank
correlation of the defined cells both attributions share, top-k overlap per target step, and the
relative sensitivity ``||phi(x) - phi(x')|| / ||phi(x)||``; the verification reports the maximum
sensitivity over the perturbations.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..result import Attribution
from ._budget import ScoreRow
from ._engine import score_sequences
from .base import Context, Request
from .removal import special_ids

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["Perturbed", "swap_perturbations", "whitespace_perturbation", "embedding_noise",
           "compare_scores", "PERTURBATIONS", "token_shape"]

PERTURBATIONS = ("swap", "whitespace", "noise")
SWAP_CANDIDATES = 12  # replacement tokens tried per position
SWAP_POSITIONS = 2  # low-importance positions tried


@dataclass
class Perturbed:
    """A perturbed input: its request, the source positions it shares with the original
    (``(original, perturbed)`` pairs) and what was changed."""

    kind: str
    request: Request
    pairs: list[tuple[int, int]]
    change: str
    output_shift: float = 0.0  # max |delta log p| over the target steps
    info: dict[str, Any] = field(default_factory=dict)


_SHAPES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[int]]] = weakref.WeakKeyDictionary()


def token_shape(text: str) -> tuple[Any, ...] | None:
    """The shape class of a token string (None for tokens that are never swapped)."""
    core = text.lstrip(" ")
    if not core or core != core.strip():
        return None
    lead = text.startswith(" ")
    if core.isalpha():
        kind = "Aa" if core[0].isupper() else "a"
    elif core.isdigit():
        kind = "9"
    elif all(not c.isalnum() for c in core):
        kind = "."
    else:
        kind = "a9"
    return (lead, kind, min(len(core), 12) // 3)


def _shape_classes(model: Model) -> dict[tuple[Any, ...], list[int]]:
    tok = model.tokenizer
    try:
        return _SHAPES[tok]
    except (KeyError, TypeError):
        pass
    specials = special_ids(model)
    classes: dict[tuple[Any, ...], list[int]] = {}
    ids = [i for i in range(min(model.vocab_size, len(tok))) if i not in specials]
    for i, text in zip(ids, model.token_strings(ids), strict=True):
        shape = token_shape(text)
        if shape is not None:
            classes.setdefault(shape, []).append(i)
    with contextlib.suppress(TypeError):
        _SHAPES[tok] = classes
    return classes


def _low_positions(a: Attribution, model: Model, top_k: int, prompt_only: bool = True) -> list[int]:
    """Prompt positions outside the top-k by summed ``|score|``, least important first."""
    specials = special_ids(model)
    ids = a.source_ids or []
    imp = a.aggregate("abs_sum")
    cands = [p for p in range(a.prompt_length) if int(ids[p]) not in specials]
    top = set(sorted(cands, key=lambda p: -imp[p])[:top_k])
    return sorted((p for p in cands if p not in top), key=lambda p: imp[p]) if prompt_only else cands


def _shifts(model: Model, reqs: Sequence[Request], base: np.ndarray, ctx: Context) -> np.ndarray:
    """Max ``|delta log p|`` over target steps of each request against ``base`` ``[T]``."""
    if not reqs:
        return np.zeros(0)
    vals = score_sequences(model, [ScoreRow(r.input_ids, r.target_ids) for r in reqs], ctx)
    return np.array([float(np.max(np.abs(np.asarray(v, np.float64) - base))) for v in vals])


def swap_perturbations(
    model: Model, a: Attribution, base: np.ndarray, ctx: Context, *, top_k: int,
    tolerance: float, rng: np.random.Generator,
) -> tuple[Perturbed | None, str]:
    """The output-preserving same-shape swap that moves the output least, or None and why."""
    classes = _shape_classes(model)
    ids = [int(i) for i in a.source_ids or []]
    n_p = a.prompt_length
    tried: list[tuple[Request, int, int]] = []
    for p in _low_positions(a, model, top_k)[:SWAP_POSITIONS]:
        pool = [i for i in classes.get(token_shape(a.source_tokens[p]) or (), []) if i != ids[p]]
        if not pool:
            continue
        for new in rng.choice(pool, size=min(SWAP_CANDIDATES, len(pool)), replace=False):
            src = ids[:p] + [int(new)] + ids[p + 1:]
            tried.append((Request(src[:n_p], src[n_p:]), p, int(new)))
    if not tried:
        return None, "no low-importance token has a same-class replacement"
    shifts = _shifts(model, [r for r, _, _ in tried], base, ctx)
    best = int(np.argmin(shifts))
    if shifts[best] > tolerance:
        return None, (f"no same-class swap keeps the output (smallest shift {shifts[best]:.3g} "
                      f"nats > tolerance {tolerance:g})")
    req, p, new = tried[best]
    change = f"token {p} {a.source_tokens[p]!r} -> {model.token_strings([new])[0]!r}"
    pairs = [(s, s) for s in range(len(ids))]
    return Perturbed("swap", req, pairs, change, float(shifts[best]),
                     {"candidates_scored": len(tried)}), ""


def whitespace_perturbation(
    model: Model, a: Attribution, base: np.ndarray, ctx: Context, *, top_k: int, tolerance: float,
) -> tuple[Perturbed | None, str]:
    """The prompt re-tokenised with one space doubled before a low-importance word."""
    ids = [int(i) for i in a.source_ids or []]
    n_p = a.prompt_length
    specials = special_ids(model)
    text_ids = [i for i in ids[:n_p] if i not in specials]
    text = model.tokenizer.decode(text_ids)
    if model.encode(text) != ids[:n_p]:
        return None, "the prompt does not re-tokenise to the same tokens"
    spaced = [p for p in _low_positions(a, model, top_k) if a.source_tokens[p].startswith(" ")]
    if not spaced:
        return None, "no low-importance word starts with a space"
    p = spaced[0]
    offset = len(model.tokenizer.decode([i for i in ids[:p] if i not in specials]))
    new_prompt = model.encode(text[:offset] + " " + text[offset:])
    if new_prompt == ids[:n_p]:
        return None, "the tokenizer normalises whitespace (nothing changes)"
    req = Request(new_prompt, ids[n_p:])
    shift = float(_shifts(model, [req], base, ctx)[0])
    if shift > tolerance:
        return None, f"doubling a space moves the output by {shift:.3g} nats (> {tolerance:g})"
    old, new = a.source_tokens[:n_p], model.token_strings(new_prompt)
    sm = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    pairs = [(blk.a + j, blk.b + j) for blk in sm.get_matching_blocks() for j in range(blk.size)]
    pairs += [(n_p + t, len(new_prompt) + t) for t in range(len(ids) - n_p)]
    return Perturbed("whitespace", req, pairs, f"space doubled before token {p} "
                     f"{a.source_tokens[p]!r}", shift), ""


@contextlib.contextmanager
def embedding_noise(model: Model, scale: float, seed: int) -> Iterator[None]:
    """Add fixed Gaussian noise (``scale`` x the embedding matrix's std) to every embedding the
    input embedding module returns, position by position; the hook is always removed."""
    emb = model.hf.get_input_embeddings()
    std = float(emb.weight.detach().float().std())
    gen = torch.Generator().manual_seed(int(seed))
    cache: dict[int, torch.Tensor] = {}

    def noise_for(n: int, d: int) -> torch.Tensor:
        if n not in cache:
            cache[n] = torch.randn((n, d), generator=gen) * (scale * std)
        return cache[n]

    def hook(_mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        if out.dim() < 2:
            return out
        n, d = out.shape[-2], out.shape[-1]
        return out + noise_for(n, d).to(out.device, out.dtype)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def compare_scores(
    a: Attribution, new: np.ndarray, pairs: Sequence[tuple[int, int]], specials_mask: np.ndarray,
    top_k: int,
) -> dict[str, float]:
    """Spearman, top-k overlap and relative sensitivity of ``new`` ``[T, S']`` against ``a``."""
    from scipy.stats import spearmanr  # scipy is slow to import; only verification needs it

    old_cols = np.array([p for p, _ in pairs], dtype=np.int64)
    new_cols = np.array([q for _, q in pairs], dtype=np.int64)
    x = a.scores[:, old_cols].astype(np.float64)
    y = np.asarray(new, dtype=np.float64)[:, new_cols]
    ok = ~np.isnan(x) & ~np.isnan(y)
    xs, ys = x[ok], y[ok]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(xs, ys).statistic) if xs.size >= 3 else float("nan")
    if xs.size >= 3 and (np.ptp(xs) == 0 or np.ptp(ys) == 0):
        rho = 1.0 if np.allclose(xs, ys) else 0.0
    norm = float(np.linalg.norm(xs))
    sens = float(np.linalg.norm(xs - ys) / norm) if norm > 0 else float("nan")
    overlaps = []
    keep = ~specials_mask[old_cols]
    for t in range(x.shape[0]):
        row_ok = ok[t] & keep
        if row_ok.sum() < 2:
            continue
        kk = min(top_k, int(row_ok.sum()) - 1)
        idx = np.flatnonzero(row_ok)
        top_x = set(idx[np.argsort(-np.abs(x[t, idx]), kind="stable")[:kk]].tolist())
        top_y = set(idx[np.argsort(-np.abs(y[t, idx]), kind="stable")[:kk]].tolist())
        overlaps.append(len(top_x & top_y) / kk)
    return {"spearman": rho, "top_k_overlap": float(np.mean(overlaps)) if overlaps else float("nan"),
            "sensitivity": sens, "cells": int(xs.size)}
