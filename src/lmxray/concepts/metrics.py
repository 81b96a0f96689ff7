"""SAE quality: L0, variance explained, cross-entropy loss recovered through the hook layer,
dead and dense latents (definitions as SAELens' ``evals.py``; see ``docs/concepts.md``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from ..errors import InputError
from ..hooks import HookContext, intervene
from ..sites import site_map
from ..zoo.tasks import corpus as zoo_corpus
from .data import site_forward, site_width, text_stream
from .results import SAEEval
from .sae import SAE

__all__ = ["attach", "check_fits", "evaluate_sae", "splice", "eval_texts"]


def check_fits(model: Any, sae: SAE, site: str) -> str:
    """The canonical ``site`` if ``sae`` reads activations of its width, else one-line error."""
    name = site_map(model)[site].name
    width = site_width(model, name)
    if width != sae.cfg.d_in:
        raise InputError(f"the SAE reads {sae.cfg.d_in}-wide activations but {name} is "
                         f"{width} wide; use an SAE trained on this site (its cfg.json: "
                         f"site {sae.cfg.site or '?'})")
    return name


def attach(model: Any, sae: SAE, site: str | None = None) -> str:
    """Make ``sae``'s latents the site ``<site>.sae`` of ``model`` (default: the site it was
    trained on); returns that name, usable in ``run``/``intervene``/``capture``."""
    site = site or sae.cfg.site
    if not site:
        raise InputError("the SAE does not say where it was trained; pass site=")
    name = check_fits(model, sae, site)
    sae.to(model.device)
    return site_map(model).attach(name, sae)


def _keep_mask(ctx: HookContext, x: torch.Tensor) -> torch.Tensor:
    """``[B, L, 1]``: real tokens except each row's first (BOS)."""
    mask = ctx.token_mask(x.shape[0], x.shape[1], x.device)
    first = mask.int().argmax(-1)
    mask = mask.clone()
    mask[torch.arange(x.shape[0], device=x.device), first] = False
    return mask[..., None]


def splice(sae: SAE, how: str = "sae") -> Any:
    """An intervention replacing a site by the SAE's reconstruction (``"sae"``) or by zero
    (``"zero"``) at every real token but BOS."""
    def fn(x: torch.Tensor, name: str, ctx: HookContext) -> torch.Tensor:
        new = sae(x) if how == "sae" else torch.zeros_like(x)
        return torch.where(_keep_mask(ctx, x), new.to(x.dtype), x)
    return fn


def _lm_loss(model: Any, seqs: list[list[int]], spec: dict[str, Any] | None) -> tuple[float, int]:
    """Summed next-token loss over predictions of real tokens 2.. of each row, and the count."""
    ids, mask, pos = model.pad_batch(seqs)
    with torch.no_grad(), intervene(model, spec or {}):
        logits = model.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    valid = (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
    return float(nll[valid].sum()), int(valid.sum())


def eval_texts(corpus: Any = None, n: int = 200) -> list[str]:
    """``n`` evaluation texts: held-out zoo text by default, else the first ``n`` of
    ``corpus``."""
    if n < 1:
        raise InputError(f"the number of evaluation texts must be >= 1, got {n}")
    if corpus is None or corpus == "zoo":
        return zoo_corpus("test", n)
    return list(itertools.islice(text_stream(corpus), n))


def evaluate_sae(model: Any, sae: SAE, site: str | None = None, *, corpus: Any = None,
                 n_texts: int = 200, batch: int = 32, max_len: int = 128) -> SAEEval:
    """Measure ``sae`` at ``site`` on ``n_texts`` texts (see :class:`SAEEval`)."""
    name = check_fits(model, sae, site or sae.cfg.site)
    texts = eval_texts(corpus, n_texts)
    seqs = sorted((s for s in (model.encode(t)[:max_len] for t in texts) if len(s) > 2), key=len)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "n": 0, "sq": 0.0, "l0": 0.0, "tok": 0}
    fired = torch.zeros(sae.cfg.d_sae)
    xs, x2 = torch.zeros(sae.cfg.d_in), 0.0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        for how in ("clean", "sae", "zero"):
            spec = None if how == "clean" else {name: splice(sae, how)}
            loss, n = _lm_loss(model, chunk, spec)
            sums[how] += loss
        sums["n"] += n
        x = _acts(model, name, chunk)
        with torch.no_grad():
            f = sae.encode(x)
            xh = sae.decode(f)
        sums["sq"] += float(((x - xh) ** 2).sum())
        sums["l0"] += float((f > 0).sum())
        sums["tok"] += len(x)
        fired += (f > 0).sum(0).float().cpu()
        xs += x.sum(0).cpu()
        x2 += float((x ** 2).sum())
    return _summarise(sae, name, model, sums, fired, xs, x2)


def _acts(model: Any, name: str, seqs: list[list[int]]) -> torch.Tensor:
    acts, mask = site_forward(model, name, seqs)
    mask = mask.bool().clone()
    mask[torch.arange(len(mask)), mask.int().argmax(-1)] = False
    return acts[mask].float()


def _summarise(sae: SAE, name: str, model: Any, sums: dict[str, float], fired: torch.Tensor,
               xs: torch.Tensor, x2: float) -> SAEEval:
    tok, n = max(sums["tok"], 1), max(sums["n"], 1)
    var = x2 / tok - float((xs / tok).pow(2).sum())
    ce = {k: sums[k] / n for k in ("clean", "sae", "zero")}
    denom = ce["zero"] - ce["clean"]
    freq = fired / tok
    return SAEEval(
        site=name, model=getattr(model, "name", ""), kind=sae.cfg.kind, d_sae=sae.cfg.d_sae,
        tokens=int(sums["tok"]), l0=sums["l0"] / tok, fve=1 - (sums["sq"] / tok) / max(var, 1e-12),
        ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
        ce_recovered=(ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-12 else math.nan,
        dead=float((fired == 0).float().mean()), dense=float((freq > 0.1).float().mean()),
        log_freq=[round(float(v), 3) for v in torch.where(
            freq > 0, freq.clamp_min(1e-10).log10(), torch.full_like(freq, -10.0))],
    )
