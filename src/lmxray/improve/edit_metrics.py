"""CounterFact-style measures of edited models (Meng et al. 2022, sec. 3 and appendix).

- **n-gram entropy** (:func:`ngram_entropy`): ROME's generation fluency, the weighted mean of the
  bigram (weight 2/3) and trigram (4/3) entropies (bits) of the words of a text; repetitive
  generations ("Paris Paris Paris") score low.
- **fluency** (:func:`fluency`): the mean n-gram entropy of the model's greedy generations from
  given prompts.
- **consistency** (:func:`consistency`): per edit, the new object is the top-1 answer on the edit
  prompt *and* on every paraphrase (the model answers the same whichever way it is asked).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from ..model import Model

__all__ = ["ngram_entropy", "fluency", "consistency"]


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3),
                  weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean over ``ns`` of the entropy (bits) of the text's word n-gram frequencies
    (0.0 for a text shorter than the n-grams)."""
    words = text.split()
    total = 0.0
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
        count = sum(grams.values())
        if count:
            total += w * -sum(c / count * math.log2(c / count) for c in grams.values())
    return total / sum(weights)


def _greedy_past_eos(model: Model, prompt: str, n: int) -> str:
    """``n`` greedy tokens after ``prompt`` with EOS never chosen (small models end their
    answers after a word or two; the text they go on with is what fluency reads)."""
    ids = model.encode(prompt)
    model.check_length(len(ids) + n)
    eos = model.eos_token_id
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids + new], device=model.device)
            logits = model.forward(input_ids=x, logits_to_keep=1).logits[0, -1].float()
            if eos is not None:
                logits[eos] = -float("inf")
            new.append(int(logits.argmax()))
    return model.tokenizer.decode(new, skip_special_tokens=True)


def fluency(model: Model, prompts: Sequence[str], max_new_tokens: int = 20) -> float:
    """Mean :func:`ngram_entropy` of the greedy generations (prompt excluded, EOS never
    chosen) of ``prompts``."""
    if not prompts:
        return float("nan")
    return float(np.mean([ngram_entropy(_greedy_past_eos(model, p, max_new_tokens))
                          for p in prompts]))


def consistency(efficacy: np.ndarray, paraphrase: Sequence[np.ndarray]) -> float:
    """Fraction of edits whose new object is top-1 on the edit prompt and all its paraphrases
    (``efficacy``: ``[edits]`` bool; ``paraphrase``: per edit, a bool array)."""
    if not len(efficacy):
        return float("nan")
    return float(np.mean([bool(e) and bool(np.all(p)) for e, p in zip(efficacy, paraphrase,
                                                                         strict=True)]))
