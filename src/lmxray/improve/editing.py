"""Locate-then-edit: a ROME-style rank-one edit of one MLP (Meng et al. 2022, "Locating and
Editing Factual Associations in GPT", arXiv 2202.05262).

ROME reads an MLP's down projection ``W`` (``[d_model, d_mlp]``) as a linear key-value memory:
the key ``k`` is the MLP's hidden activation (the input of ``W``) at the subject's last token,
the value ``W k`` the vector it writes into the residual stream. To make "The capital of France
is" answer " Rome":

1. **locate**: causal tracing (:func:`lmxray.internals.tracing.trace_facts`, restoring MLP
   outputs) over known facts; the edit layer is the one whose MLP output at the last subject
   token has the largest average indirect effect;
2. **key** ``k*``: the hidden activation at the subject's last token of the edit prompt;
3. **value** ``v* = W k* + δ``: ``δ`` (``[d_model]``) is optimised with Adam so that adding it to
   the MLP output at that token makes the new object likely — ``-log P(o* | prompt)`` plus
   ``kl_factor`` × KL between the original and the edited next-token distribution after
   "{subject} is a" (ROME's essence drift) — its norm capped at ``clamp`` × ``‖W k*‖``;
4. **rank-one update**: ``W' = W + (v* - W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*)``, with ``C = E[k kᵀ]``
   the uncentred covariance of keys over sample text. ``W' k* = v*`` exactly, and keys
   orthogonal to ``C⁻¹ k*`` are untouched: the solution of ``min ‖W' K - W K‖`` subject to
   ``W' k* = v*`` (ROME eq. 2).

:func:`evaluate_edits` applies edits one at a time (each undone before the next) and reports
ROME's zsRE-style top-1 metrics: efficacy (new object top-1 on the edit prompt), paraphrase
(other templates of the same fact), specificity (other known facts keep their answer) and
generation fluency (n-gram entropy of the greedy text from a paraphrase of the edited fact,
:mod:`lmxray.improve.edit_metrics`), against editing a random other layer with the same procedure.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError, MethodError
from ..examples import AnnotatedExample
from ..hooks import run_with_cache
from ..internals.tracing import subject_positions, trace_facts
from ..model import Model
from ..sites import site_map
from ..zoo import corpus
from ._common import target_correct
from .edit_metrics import fluency
from .results import EditReport

__all__ = [
    "RankOneEdit",
    "weights_added",
    "edited_copy",
    "rank_one_hook",
    "context_prefixes",
    "prompt_variants",
    "EditReport",
    "key_covariance",
    "key_covariances",
    "rome_edit",
    "locate_layer",
    "evaluate_edits",
    "counterfactuals",
    "plan_edits",
    "top1",
    "fact_group",
]


# --------------------------------------------------------------------------- the down projection
def _down(model: Model, layer: int) -> torch.nn.Module:
    sm = site_map(model)
    if not 0 <= layer < sm.n_layers:
        raise InputError(f"layer {layer} is out of range; the model has {sm.n_layers} layers")
    try:
        down = sm[f"layers.{layer}.mlp.hidden"].module
        out_mod = sm[f"layers.{layer}.mlp.out"].module
    except (KeyError, MethodError, InputError):
        raise MethodError(
            f"ROME needs the MLP's down projection; {sm.family} models do not name it"
        ) from None
    if "norm" in type(out_mod).__name__.lower():
        raise MethodError(
            f"{sm.family} applies a norm after the MLP's down projection, so its output is not W k; "
            "ROME's rank-one edit does not apply"
        )
    w = getattr(down, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise MethodError(f"the MLP down projection of layer {layer} has no 2-D weight")
    return down


def _linear_weight(down: torch.nn.Module) -> tuple[torch.Tensor, bool]:
    """``(weight, transposed)``: nn.Linear stores ``[out, in]``; GPT-2's Conv1D ``[in, out]``."""
    transposed = type(down).__name__ == "Conv1D"
    return down.weight, transposed


# --------------------------------------------------------------------------- the edit
@dataclass
class RankOneEdit:
    """A rank-one update ``ΔW = value ⊗ key`` (``[d_model] ⊗ [d_mlp]``) of one MLP.

    Attributes:
        layer: the edited block. value: ``v* - W k*`` ``[d_model]``. key: ``C⁻¹k* / (k*ᵀC⁻¹k*)``
            ``[d_mlp]``. prompt / subject / target: the rewrite. info: optimisation details.
    """

    layer: int
    value: torch.Tensor
    key: torch.Tensor
    prompt: str = ""
    subject: str = ""
    target: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def delta(self) -> torch.Tensor:
        """``ΔW`` in ``[d_model, d_mlp]`` (nn.Linear) orientation."""
        return torch.outer(self.value, self.key)

    def applied(self, model: Model) -> contextlib.AbstractContextManager[Model]:
        """Apply the edit to ``model``'s weights inside the block; restored bit-exactly after.

        For evaluation loops that must not copy a model per edit. The weight is restored in
        ``finally`` even when the block raises. Use :meth:`apply` for a lasting edited copy.
        """
        return weights_added(model, {self.layer: self.delta()})

    def apply(self, model: Model) -> Model:
        """An edited deep copy of ``model`` (the input model is unchanged)."""
        return edited_copy(model, {self.layer: self.delta()}, "rome")


def _add_deltas(model: Model, deltas: dict[int, torch.Tensor]) -> None:
    for layer, d in deltas.items():
        w, transposed = _linear_weight(_down(model, layer))
        d = d.to(w.device, w.dtype)
        with torch.no_grad():
            w.add_(d.T if transposed else d)


@contextlib.contextmanager
def weights_added(model: Model, deltas: dict[int, torch.Tensor]) -> Iterator[Model]:
    """``model`` with ``ΔW`` (``[d_model, d_mlp]``, nn.Linear orientation) added to the MLP
    down projection of each layer of ``deltas`` inside the block; restored bit-exactly after
    (also when the block raises)."""
    saved = {ly: _linear_weight(_down(model, ly))[0].detach().clone() for ly in deltas}
    try:
        _add_deltas(model, deltas)
        yield model
    finally:
        with torch.no_grad():
            for ly, w0 in saved.items():
                _linear_weight(_down(model, ly))[0].copy_(w0)


def edited_copy(model: Model, deltas: dict[int, torch.Tensor], tag: str) -> Model:
    """A deep copy of ``model`` named ``{name}+{tag}`` with the ``deltas`` added (the input model
    is unchanged)."""
    edited = Model(copy.deepcopy(model.hf), model.tokenizer, name=f"{model.name}+{tag}")
    _add_deltas(edited, deltas)
    return edited


def key_covariance(
    model: Model, layer: int, texts: Sequence[str], *, batch_size: int = 32, ridge: float = 1e-3
) -> torch.Tensor:
    """``C = E[k kᵀ] + ridge · mean(diag) · I`` ``[d_mlp, d_mlp]`` (float64) over every token of
    ``texts`` (each cut to the model's context length)."""
    return key_covariances(model, [layer], texts, batch_size=batch_size, ridge=ridge)[layer]


def key_covariances(
    model: Model, layers: Sequence[int], texts: Sequence[str], *, batch_size: int = 32,
    ridge: float = 1e-3,
) -> dict[int, torch.Tensor]:
    """:func:`key_covariance` of each of ``layers``, all read in one pass over ``texts``."""
    if not texts:
        raise InputError(
            "the key covariance needs sample texts (e.g. lmxray.zoo.corpus('train', 300))"
        )
    names = {ly: f"layers.{ly}.mlp.hidden" for ly in sorted(set(layers))}
    limit = model.max_length or 1 << 30
    seqs = [ids[:limit] for ids in (model.encode(t) for t in texts) if ids]  # longer texts are cut
    acc: dict[int, torch.Tensor] = {}
    n = 0
    for a in range(0, len(seqs), batch_size):
        cache = run_with_cache(model, seqs[a : a + batch_size], cache=list(names.values()),
                               logits=False)
        mask = cache.attention_mask.bool()
        n += int(mask.sum())
        for ly, name in names.items():
            k = cache[name].double()
            k = k[mask.to(k.device)]  # [tokens, d_mlp]
            acc[ly] = k.T @ k if ly not in acc else acc[ly] + k.T @ k
    out = {}
    for ly in names:
        c = (acc[ly] / max(n, 1)).cpu()
        out[ly] = c + ridge * float(c.diagonal().mean()) * torch.eye(c.shape[0], dtype=c.dtype)
    return out


def _subject_last(model: Model, prompt: str, subject: Any) -> int:
    return max(subject_positions(model, prompt, subject))


@contextlib.contextmanager
def rank_one_hook(model: Model, layer: int, key: torch.Tensor, value: torch.Tensor) -> Iterator[None]:
    """Run ``model`` as if the MLP down projection of ``layer`` were ``W + value ⊗ key``, without
    touching the weights: every position's output gets ``(key · k_t) value`` added (a forward
    hook; ``value`` may require grad, so the rank-one update itself can be optimised)."""
    down = _down(model, layer)

    def hook(_mod: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        coef = args[0].float() @ key.to(args[0].device, torch.float32)
        return output + (coef.unsqueeze(-1) * value.to(output.device)).to(output.dtype)

    handle = down.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def context_prefixes(texts: Sequence[str], n: int, *, seed: int = 0, words: int = 5) -> list[str]:
    """``n`` short prefixes (the first 1..``words`` words of seeded sample texts, ending in ". ")
    that :func:`rome_edit` puts before the prompt: ROME's context templates, so that the key and
    the value hold in other contexts than the bare edit prompt."""
    rng = random.Random(seed)
    pool = [t.split() for t in texts if t.split()]
    if n and not pool:
        raise InputError("context prefixes need sample texts with words")
    out = []
    for _ in range(n):
        ws = rng.choice(pool)
        out.append(" ".join(ws[: rng.randint(1, words)]).rstrip(".") + ". ")
    return out


def prompt_variants(model: Model, prompt: str, subject: str, t_ids: list[int],
              prefixes: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(ids, subject's last position)`` of the prompt alone and after each prefix."""
    out = []
    for pre in ["", *prefixes]:
        ids = model.encode(pre + prompt)
        model.check_length(len(ids) + len(t_ids))
        out.append((ids, _subject_last(model, pre + prompt, subject)))
    return out


def rome_edit(
    model: Model,
    prompt: str,
    subject: Any,
    target: str,
    *,
    layer: int,
    cov: torch.Tensor,
    steps: int = 100, lr: float = 0.5, kl_factor: float = 0.0625, clamp: float = 4.0,
    essence_prompt: str | None = None, stop_prob: float = 0.95, prefixes: Sequence[str] = (),
) -> RankOneEdit:
    """Compute (not apply) a ROME rank-one edit making ``prompt`` continue with ``target``.

    The value is optimised through the rank-one update itself (:func:`rank_one_hook`: every
    position whose key overlaps ``C⁻¹k*`` changes, as it will once the weight is edited), so the
    probability reached in the optimisation is the edited model's.

    Args:
        model: the lmxray Model (not modified: only activations are read and ``δ`` optimised).
        prompt: the rewrite prompt ("The capital of France is").
        subject: the subject (substring, token range or positions; its last token is the key).
        target: the new object with its leading space (" Rome").
        layer: the edited block (see :func:`locate_layer`). cov: :func:`key_covariance` there.
        steps / lr: Adam steps and learning rate (relative to ``‖W k*‖``) of ``δ``.
        kl_factor: weight of the essence KL term. clamp: ``‖δ‖ ≤ clamp · ‖W k*‖``.
        essence_prompt: the KL prompt (default "{subject} is a").
        stop_prob: stop early once ``P(target)`` (geometric mean over the prompts of the
            product over its tokens) exceeds this.
        prefixes: context prefixes (:func:`context_prefixes`); the key ``k*`` is the mean key
            over the prompt alone and after each prefix, and the value is optimised on all.

    Returns:
        :class:`RankOneEdit`.
    """
    sm = site_map(model)
    if not 0 <= layer < sm.n_layers:
        raise InputError(f"layer {layer} is out of range; the model has {sm.n_layers} layers")
    t_ids = model.encode_target(target)
    if not t_ids:
        raise InputError(f"the new target {target!r} tokenizes to no tokens")
    p_ids = model.encode(prompt)
    model.check_length(len(p_ids) + len(t_ids))
    pos = _subject_last(model, prompt, subject)
    subj_text = (
        subject
        if isinstance(subject, str)
        else model.tokenizer.decode(
            [p_ids[i] for i in subject_positions(model, prompt, subject)], skip_special_tokens=True
        ).strip()
    )
    variants = [(p_ids, pos)]
    if subj_text and prefixes:
        variants += prompt_variants(model, prompt, subj_text, t_ids, prefixes)[1:]
    ess = essence_prompt if essence_prompt is not None else f"{subj_text} is a"
    k_star, scale = mean_key(model, layer, variants)
    key = _rank_one_key(cov, k_star)
    problem = _DeltaProblem(
        model, layer, key, variants, t_ids, model.encode(ess), scale, kl_factor, clamp, stop_prob
    )
    delta, p_new, n_steps = problem.optimise(steps, lr)
    value = delta.detach().float().cpu()  # v* - W k* (the bias, if any, is unchanged)
    return RankOneEdit(
        layer=layer, value=value, key=key, prompt=prompt, subject=subj_text, target=target,
        info={
            "p_target": round(p_new, 4),
            "steps": n_steps,
            "delta_norm": float(value.norm()),
            "wk_norm": scale,
            "position": pos,
            "prefixes": len(variants) - 1,
        },
    )


def mean_key(model: Model, layer: int, variants: Sequence[tuple[list[int], int]]
              ) -> tuple[torch.Tensor, float]:
    """The mean key ``k*`` (float64) at the subject's last token over the variants, and the
    norm of the MLP output there in the bare prompt (``‖W k*‖``, the scale of ``δ``)."""
    _down(model, layer)  # checks the family
    hid, out = f"layers.{layer}.mlp.hidden", f"layers.{layer}.mlp.out"
    keys, scale = [], 1.0
    for j, (ids, pos) in enumerate(variants):
        cache = run_with_cache(model, [ids], cache=[hid, out], logits=False)
        keys.append(cache[hid][0, pos].double().cpu())
        if j == 0:
            scale = float(cache[out][0, pos].float().norm()) or 1.0
    return torch.stack(keys).mean(0), scale


def _rank_one_key(cov: torch.Tensor, k_star: torch.Tensor) -> torch.Tensor:
    """``C⁻¹k* / (k*ᵀC⁻¹k*)`` (float32)."""
    cinv_k = torch.linalg.solve(cov.double(), k_star)
    denom = float(cinv_k @ k_star)
    if not denom > 0:
        raise MethodError(
            "the key covariance is not positive definite at this key; use more sample text"
        )
    return (cinv_k / denom).float()


@dataclass
class _DeltaProblem:
    """ROME's value optimisation through the rank-one update ``δ ⊗ key`` of ``layer``: the
    target is likely after every variant of the prompt, with a KL penalty on the essence
    prompt's next token."""

    model: Model
    layer: int
    key: torch.Tensor
    variants: list[tuple[list[int], int]]
    t_ids: list[int]
    ess_ids: list[int]
    scale: float
    kl_factor: float
    clamp: float
    stop_prob: float

    def _logp(self, delta: torch.Tensor | None) -> torch.Tensor:
        """``[rows, n_t, vocab]`` log-probabilities at the last ``n_t`` positions of every variant
        (teacher-forced on the target) and of the essence prompt (last row), in one forward."""
        m, n_t = self.model, len(self.t_ids)
        seqs = [ids + self.t_ids[:-1] for ids, _ in self.variants] + [self.ess_ids]
        x, mask, pos = m.pad_batch(seqs)
        ctx = (rank_one_hook(m, self.layer, self.key, delta) if delta is not None
               else contextlib.nullcontext())
        with ctx:
            logits = m.forward(input_ids=x, attention_mask=mask, position_ids=pos,
                               logits_to_keep=n_t).logits.float()
        return torch.log_softmax(logits, -1)

    def _loss(self, delta: torch.Tensor, base_ess: torch.Tensor) -> tuple[torch.Tensor, float]:
        n_t = len(self.t_ids)
        lp = self._logp(delta)
        tgt = torch.tensor(self.t_ids, device=lp.device)
        nll = -lp[:-1, torch.arange(n_t), tgt].sum(-1)  # [variants]
        loss = nll.mean()
        if self.kl_factor > 0:
            le = lp[-1, -1]
            loss = loss + self.kl_factor * torch.sum(base_ess.exp() * (base_ess - le))
        return loss, float(torch.exp(-nll.detach().mean()))

    def optimise(self, steps: int, lr: float) -> tuple[torch.Tensor, float, int]:
        """``(δ, P(target) at the last step, steps run)``; Adam, ``‖δ‖`` capped."""
        m = self.model
        with torch.no_grad():
            base_ess = self._logp(None)[-1, -1]
        delta = torch.zeros(m.d_model, device=m.device, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr * self.scale / np.sqrt(m.d_model))
        was = m.hf.training
        m.hf.eval()
        p_new, n_steps = 0.0, 0
        try:
            for step in range(1, steps + 1):
                n_steps = step
                with torch.enable_grad():
                    loss, p_new = self._loss(delta, base_ess)
                    if p_new >= self.stop_prob:
                        break
                    (g,) = torch.autograd.grad(loss, [delta])  # no .grad left on the model
                delta.grad = g
                opt.step()
                with torch.no_grad():
                    cap = self.clamp * self.scale
                    if float(delta.norm()) > cap:
                        delta.mul_(cap / float(delta.norm()))
        finally:
            if was:
                m.hf.train()
        return delta, p_new, n_steps


# --------------------------------------------------------------------------- locate
def locate_layer(
    model: Model,
    facts: Sequence[Any],
    *,
    n_samples: int = 5,
    window: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[int, np.ndarray]:
    """The MLP layer whose output at the last subject token has the largest AIE.

    Args:
        facts: known facts (``prompt``, ``subject``, ``answer``/``target``; see ``trace_facts``).
        window: MLP layers restored together (default ``max(1, round(n_layers * 10 / 48))``: the
            paper's 10 of GPT-2 XL's 48, scaled to the model's depth).

    Returns:
        ``(layer, aie)`` with ``aie`` the ``[n_layers]`` last-subject-token AIE per layer.
    """
    n_l = site_map(model).n_layers
    w = window if window is not None else max(1, round(n_l * 10 / 48))
    summary = trace_facts(
        model,
        facts,
        kinds=("mlp.out",),
        window=w,
        n_samples=n_samples,
        seed=seed,
        progress=progress,
    )
    aie = np.nan_to_num(summary.aie["mlp.out"][:, 2], nan=-np.inf)  # bucket 2: last subject token
    return int(np.argmax(aie)), summary.aie["mlp.out"][:, 2]


# --------------------------------------------------------------------------- evaluation
def top1(model: Model, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    if not pairs:
        return np.zeros(0, dtype=bool)
    return target_correct(model, [AnnotatedExample(p, t) for p, t in pairs], batch_size=batch_size)


def counterfactuals(
    facts: Sequence[dict[str, Any]], pool: Sequence[dict[str, Any]] | None = None, seed: int = 0
) -> list[str]:
    """For each fact, a new object: another answer of the same relation among ``pool`` (default
    ``facts``), drawn with a seeded generator (CounterFact's recipe)."""
    rng = random.Random(seed)
    by_rel: dict[str, list[str]] = {}
    for f in pool if pool is not None else facts:
        by_rel.setdefault(str(f.get("relation")), []).append(str(f["answer"]))
    out = []
    for f in facts:
        pool_r = sorted(
            {
                a
                for a in by_rel.get(str(f.get("relation")), [])
                if a.strip() != str(f["answer"]).strip()
            }
        )
        if not pool_r:
            raise InputError(
                f"no other answer of relation {f.get('relation')!r} to edit the fact into"
            )
        out.append(rng.choice(pool_r))
    return out


def fact_group(f: dict[str, Any]) -> tuple[str, str]:
    """A fact's paraphrase group: facts with the same subject and relation."""
    return str(f.get("subject_text")), str(f.get("relation"))


def _choose_facts(
    facts: Sequence[dict[str, Any]], known: np.ndarray, n_edits: int, seed: int,
    one_per_subject: bool = False,
) -> tuple[list[int], dict[tuple[str, str], list[int]]]:
    """``n_edits`` known facts that have paraphrases, one per (subject, relation) (or one per
    subject with ``one_per_subject``), seeded; and the paraphrase groups."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(facts):
        groups.setdefault(fact_group(f), []).append(i)
    cands = [i for i in range(len(facts)) if known[i] and len(groups[fact_group(facts[i])]) > 1]
    random.Random(seed).shuffle(cands)
    chosen, seen = [], set()
    for i in cands:
        key = fact_group(facts[i])[0] if one_per_subject else fact_group(facts[i])
        if key not in seen:
            seen.add(key)
            chosen.append(i)
        if len(chosen) == n_edits:
            break
    if len(chosen) < n_edits:
        what = "subjects with known facts that have" if one_per_subject else "known facts with"
        raise InputError(
            f"only {len(chosen)} {what} paraphrases; need {n_edits} (pass more facts or fewer "
            "edits)"
        )
    return chosen, groups


def plan_edits(
    model: Model, facts: list[dict[str, Any]], n_edits: int, layer: int | None,
    trace_facts_n: int, seed: int, one_per_subject: bool = False,
) -> tuple[list[int], dict[tuple[str, str], list[int]], list[int], int, np.ndarray]:
    """Check the request, find the facts the model knows and choose ``n_edits`` of them (one
    per paraphrase group, or per subject with ``one_per_subject``: edits applied together must
    not ask one subject's key for two values); locate the edit layer when ``layer`` is None (causal tracing on up
    to ``trace_facts_n`` other known facts).

    Returns:
        ``(chosen, groups, known_idx, layer, aie)``; ``aie`` is NaN when ``layer`` was given.
    """
    n_l = site_map(model).n_layers
    if layer is not None and not -n_l <= layer < n_l:
        raise InputError(f"layer {layer} is out of range; the model has {n_l} layers")
    if n_edits < 1:
        raise InputError(f"n_edits must be at least 1, got {n_edits}")
    sizes = Counter(fact_group(f) for f in facts)
    n_groups = len({g[0] if one_per_subject else g for g, c in sizes.items() if c > 1})
    if n_groups < n_edits:  # before any work: at most one edit per fact with paraphrases
        what = "subjects have facts with" if one_per_subject else "facts have"
        raise InputError(
            f"only {n_groups} {what} paraphrases, so at most {n_groups} known facts can be "
            f"edited together; need {n_edits} (pass more facts or fewer edits)"
        )
    known = top1(model, [(f["prompt"], f["answer"]) for f in facts])
    chosen, groups = _choose_facts(facts, known, n_edits, seed, one_per_subject)
    known_idx = [i for i in range(len(facts)) if known[i]]
    aie = np.full(n_l, np.nan)
    if layer is None:
        trace_set = [facts[i] for i in known_idx if i not in set(chosen)][:trace_facts_n] or [
            facts[i] for i in chosen
        ]
        layer, aie = locate_layer(model, trace_set, seed=seed)
    return chosen, groups, known_idx, int(layer) % n_l, aie


@dataclass
class _EditBench:
    """What every edit of :func:`evaluate_edits` shares: the model, the facts, the key
    covariances (one per layer, computed once) and the ``rome_edit`` settings."""

    model: Model
    facts: list[dict[str, Any]]
    groups: dict[tuple[str, str], list[int]]
    known_idx: list[int]
    texts: list[str]
    n_specificity: int
    edit_kwargs: dict[str, Any]
    prefixes: list[str] = field(default_factory=list)
    covs: dict[int, torch.Tensor] = field(default_factory=dict)

    def cov_at(self, ly: int) -> torch.Tensor:
        if ly not in self.covs:
            self.covs[ly] = key_covariance(self.model, ly, self.texts)
        return self.covs[ly]

    def probes(self, i: int, target: str, srng: random.Random) -> list[list[tuple[str, str]]]:
        """The edit prompt, its paraphrases (both with the new object) and other known facts
        (with their own answers)."""
        f, facts = self.facts[i], self.facts
        para = [j for j in self.groups[fact_group(f)] if j != i]
        others = [j for j in self.known_idx
                  if str(facts[j].get("subject_text")) != str(f.get("subject_text"))]
        spec = srng.sample(others, min(self.n_specificity, len(others)))
        return [[(f["prompt"], target)], [(facts[j]["prompt"], target) for j in para],
                [(facts[j]["prompt"], facts[j]["answer"]) for j in spec]]

    def measure(self, probes: list[list[tuple[str, str]]]) -> tuple[np.ndarray, ...]:
        return tuple(top1(self.model, p) for p in probes)

    def fluency(self, probes: list[list[tuple[str, str]]]) -> float:
        """N-gram entropy of the greedy generation from the fact's first paraphrase (the edit
        prompt when it has none): text about the edited subject."""
        return fluency(self.model, [(probes[1] or probes[0])[0][0]])

    def edit(self, i: int, target: str, ly: int) -> RankOneEdit:
        """The ROME edit of fact ``i`` into ``target`` at layer ``ly`` (not applied)."""
        f = self.facts[i]
        return rome_edit(self.model, f["prompt"], f["subject"], target, layer=ly,
                         cov=self.cov_at(ly), prefixes=self.prefixes, **self.edit_kwargs)


def _edit_row(
    bench: _EditBench, i: int, new_obj: str, editors: dict[str, Any], srng: random.Random, bar: Any
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, ...]]]:
    """Edit fact ``i`` with each editor (one at a time, undone after); the per-edit row and
    the top-1 results ``(efficacy, paraphrase, specificity)`` per editor and unedited."""
    f = bench.facts[i]
    target = " " + new_obj.strip() if not new_obj.startswith(" ") else new_obj
    probes = bench.probes(i, target, srng)
    row: dict[str, Any] = {
        "prompt": f["prompt"], "subject": f.get("subject_text"), "old": f["answer"], "new": target,
    }
    res = {"unedited": bench.measure(probes)}
    flu = {"unedited": bench.fluency(probes)}
    for name, pick in editors.items():
        ly = pick(i)
        ed = bench.edit(i, target, ly)
        with ed.applied(bench.model):
            res[name] = bench.measure(probes)
            flu[name] = bench.fluency(probes)
        row[f"{name} layer"] = ly
        row[f"{name} p_target_opt"] = ed.info["p_target"]
        bar.update(1)
    for name, (e, p, s) in res.items():
        row[name] = {
            "efficacy": bool(e.all()),
            "paraphrase": float(p.mean()) if len(p) else None,
            "specificity": float(s.mean()) if len(s) else None,
            "fluency": flu[name],
        }
    return row, res


def evaluate_edits(
    model: Model,
    facts: Sequence[dict[str, Any]],
    *,
    n_edits: int = 50,
    layer: int | None = None,
    trace_facts_n: int = 30,
    cov_texts: Sequence[str] | None = None,
    n_specificity: int = 20,
    compare_random: bool = True,
    n_prefixes: int = 5,
    seed: int = 0,
    progress: bool = True,
    **edit_kwargs: Any,
) -> EditReport:
    """Apply ``n_edits`` counterfactual edits one at a time and measure them.

    Args:
        facts: dicts with ``prompt``, ``subject``, ``answer``, ``relation`` and ``subject_text``
            (as ``lmxray.internals`` zoo facts give); facts sharing ``subject_text`` and
            ``relation`` are paraphrases (other templates) of each other.
        n_edits: edits to make (facts the model gets right, with at least one paraphrase).
        layer: edit layer; default: :func:`locate_layer` on ``trace_facts_n`` known facts.
        cov_texts: text for the key covariance (default: 300 zoo training texts).
        n_specificity: other known facts checked after each edit.
        compare_random: also edit a random other layer (seeded) per fact.
        n_prefixes: context prefixes per edit (:func:`context_prefixes` of ``cov_texts``).
        **edit_kwargs: passed to :func:`rome_edit`.
    """
    facts = list(facts)
    n_l = site_map(model).n_layers
    chosen, groups, known_idx, layer, aie = plan_edits(
        model, facts, n_edits, layer, trace_facts_n, seed)
    texts = list(cov_texts) if cov_texts is not None else corpus("train", 300, seed=seed)
    bench = _EditBench(model, facts, groups, known_idx, texts, n_specificity, edit_kwargs,
                       context_prefixes(texts, n_prefixes, seed=seed))
    new_obj = counterfactuals([facts[i] for i in chosen], facts, seed=seed)
    editors: dict[str, Any] = {"located": lambda i: layer}
    if compare_random and n_l > 1:
        rl = random.Random(seed + 1)
        rand_layers = {i: rl.choice([x for x in range(n_l) if x != layer]) for i in chosen}
        editors["random layer"] = lambda i: rand_layers[i]
    metrics: dict[str, dict[str, list[float]]] = {
        k: {"efficacy": [], "paraphrase": [], "specificity": [], "consistency": [], "fluency": []}
        for k in ["unedited", *editors]
    }
    edits_out = []
    srng = random.Random(seed + 2)
    with tqdm(total=len(chosen) * len(editors), desc="rome edits", disable=not progress) as bar:
        for k, i in enumerate(chosen):
            row, res = _edit_row(bench, i, new_obj[k], editors, srng, bar)
            for name, (e, p, s) in res.items():
                metrics[name]["efficacy"].append(float(e.mean()))
                metrics[name]["paraphrase"].append(float(p.mean()) if len(p) else np.nan)
                metrics[name]["specificity"].append(float(s.mean()) if len(s) else np.nan)
                metrics[name]["consistency"].append(float(bool(e.all()) and bool(p.all())))
                metrics[name]["fluency"].append(row[name]["fluency"])
            edits_out.append(row)
    summary = {
        name: {"n": len(chosen), **{m: float(np.nanmean(v)) for m, v in d.items()}}
        for name, d in metrics.items()
    }
    return EditReport(
        layer=layer,
        aie=[float(v) for v in aie],
        rows=summary,
        edits=edits_out,
        model_name=model.name,
        info={
            "n_specificity": n_specificity,
            "seed": seed,
            "cov_texts": len(texts),
            "edit_kwargs": {
                k: v for k, v in edit_kwargs.items() if isinstance(v, int | float | str)
            },
        },
    )
