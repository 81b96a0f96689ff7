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
(other templates of the same fact), specificity (other known facts keep their answer), against
editing a random other layer with the same procedure.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MethodError
from ..hooks import add, intervene, run_with_cache
from ..internals._result import JsonResult
from ..internals.tracing import subject_positions
from ..model import Model
from ..sites import site_map
from ._common import format_table

__all__ = [
    "RankOneEdit",
    "EditReport",
    "key_covariance",
    "rome_edit",
    "locate_layer",
    "evaluate_edits",
    "counterfactuals",
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

    @contextlib.contextmanager
    def applied(self, model: Model) -> Iterator[Model]:
        """Apply the edit to ``model``'s weights inside the block; restored bit-exactly after.

        For evaluation loops that must not copy a model per edit. The weight is restored in
        ``finally`` even when the block raises. Use :meth:`apply` for a lasting edited copy.
        """
        down = _down(model, self.layer)
        w, transposed = _linear_weight(down)
        saved = w.detach().clone()
        d = self.delta().to(w.device, w.dtype)
        try:
            with torch.no_grad():
                w.add_(d.T if transposed else d)
            yield model
        finally:
            with torch.no_grad():
                w.copy_(saved)

    def apply(self, model: Model) -> Model:
        """An edited deep copy of ``model`` (the input model is unchanged)."""
        hf = copy.deepcopy(model.hf)
        edited = Model(hf, model.tokenizer, name=f"{model.name}+rome")
        down = _down(edited, self.layer)
        w, transposed = _linear_weight(down)
        d = self.delta().to(w.device, w.dtype)
        with torch.no_grad():
            w.add_(d.T if transposed else d)
        return edited


def key_covariance(
    model: Model, layer: int, texts: Sequence[str], *, batch_size: int = 32, ridge: float = 1e-3
) -> torch.Tensor:
    """``C = E[k kᵀ] + ridge · mean(diag) · I`` ``[d_mlp, d_mlp]`` (float64) over every token of
    ``texts`` (each cut to the model's context length)."""
    if not texts:
        raise InputError(
            "the key covariance needs sample texts (e.g. lmxray.zoo.corpus('train', 300))"
        )
    name = f"layers.{layer}.mlp.hidden"
    limit = model.max_length or 1 << 30
    seqs = [ids[:limit] for ids in (model.encode(t) for t in texts) if ids]  # longer texts are cut
    acc: torch.Tensor | None = None
    n = 0
    for a in range(0, len(seqs), batch_size):
        cache = run_with_cache(model, seqs[a : a + batch_size], cache=[name], logits=False)
        k = cache[name].double()
        mask = cache.attention_mask.bool().to(k.device)
        k = k[mask]  # [tokens, d_mlp]
        acc = k.T @ k if acc is None else acc + k.T @ k
        n += k.shape[0]
    assert acc is not None
    c = (acc / max(n, 1)).cpu()
    return c + ridge * float(c.diagonal().mean()) * torch.eye(c.shape[0], dtype=c.dtype)


def _subject_last(model: Model, prompt: str, subject: Any) -> int:
    return max(subject_positions(model, prompt, subject))


def rome_edit(
    model: Model,
    prompt: str,
    subject: Any,
    target: str,
    *,
    layer: int,
    cov: torch.Tensor,
    steps: int = 100,
    lr: float = 0.5,
    kl_factor: float = 0.0625,
    clamp: float = 4.0,
    essence_prompt: str | None = None,
    stop_prob: float = 0.95,
) -> RankOneEdit:
    """Compute (not apply) a ROME rank-one edit making ``prompt`` continue with ``target``.

    Args:
        model: the lmxray Model (not modified: only activations are read and ``δ`` optimised).
        prompt: the rewrite prompt ("The capital of France is").
        subject: the subject (substring, token range or positions; its last token is the key).
        target: the new object with its leading space (" Rome").
        layer: the edited block (see :func:`locate_layer`). cov: :func:`key_covariance` there.
        steps / lr: Adam steps and learning rate (relative to ``‖W k*‖``) of ``δ``.
        kl_factor: weight of the essence KL term. clamp: ``‖δ‖ ≤ clamp · ‖W k*‖``.
        essence_prompt: the KL prompt (default "{subject} is a").
        stop_prob: stop early once ``P(target)`` (product over its tokens) exceeds this.

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
    ess = essence_prompt if essence_prompt is not None else f"{subj_text} is a"
    hid, out = f"layers.{layer}.mlp.hidden", f"layers.{layer}.mlp.out"
    _down(model, layer)  # checks the family
    cache = run_with_cache(model, [p_ids], cache=[hid, out], logits=False)
    k_star = cache[hid][0, pos].double().cpu()
    wk = cache[out][0, pos].float()
    scale = float(wk.norm()) or 1.0
    dev, dt = model.device, model.dtype
    ess_ids = model.encode(ess)
    e_pos = (
        _subject_last(model, ess, subj_text) if subj_text and subj_text in ess else len(ess_ids) - 1
    )
    seq = torch.tensor([p_ids + t_ids[:-1]], device=dev)
    with torch.no_grad():
        base_ess = torch.log_softmax(
            model.forward(input_ids=torch.tensor([ess_ids], device=dev), logits_to_keep=1)
            .logits[0, -1]
            .float(),
            -1,
        )
    delta = torch.zeros(model.d_model, device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr * scale / np.sqrt(model.d_model))
    tgt = torch.tensor(t_ids, device=dev)
    was = model.hf.training
    model.hf.eval()
    p_new = 0.0
    n_steps = 0
    try:
        for step in range(1, steps + 1):
            n_steps = step
            with torch.enable_grad():
                with intervene(model, {out: add(delta.to(dt), positions=[pos])}):
                    lg = model.forward(input_ids=seq, logits_to_keep=len(t_ids)).logits[0].float()
                nll = -torch.log_softmax(lg, -1)[torch.arange(len(t_ids)), tgt].sum()
                loss = nll
                if kl_factor > 0:
                    with intervene(model, {out: add(delta.to(dt), positions=[e_pos])}):
                        le = torch.log_softmax(
                            model.forward(
                                input_ids=torch.tensor([ess_ids], device=dev), logits_to_keep=1
                            )
                            .logits[0, -1]
                            .float(),
                            -1,
                        )
                    loss = loss + kl_factor * torch.sum(base_ess.exp() * (base_ess - le))
                p_new = float(torch.exp(-nll.detach()))
                if p_new >= stop_prob:
                    break
                (g,) = torch.autograd.grad(loss, [delta])  # no .grad left on the model's parameters
            delta.grad = g
            opt.step()
            with torch.no_grad():
                cap = clamp * scale
                if float(delta.norm()) > cap:
                    delta.mul_(cap / float(delta.norm()))
    finally:
        if was:
            model.hf.train()
    cinv_k = torch.linalg.solve(cov.double(), k_star)
    denom = float(cinv_k @ k_star)
    if not denom > 0:
        raise MethodError(
            "the key covariance is not positive definite at this key; use more sample text"
        )
    value = delta.detach().float().cpu()  # v* - W k* (the bias, if any, is unchanged)
    key = (cinv_k / denom).float()
    return RankOneEdit(
        layer=layer,
        value=value,
        key=key,
        prompt=prompt,
        subject=subj_text,
        target=target,
        info={
            "p_target": round(p_new, 4),
            "steps": n_steps,
            "delta_norm": float(value.norm()),
            "wk_norm": scale,
            "position": pos,
        },
    )


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
    from ..internals.tracing import trace_facts

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
def _top1(model: Model, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    from ._common import Labelled, target_correct

    if not pairs:
        return np.zeros(0, dtype=bool)
    return target_correct(model, [Labelled(p, t) for p, t in pairs], batch_size=batch_size)


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


@dataclass
class EditReport(JsonResult):
    """Before/after metrics of single edits at the located layer and at random layers.

    Attributes:
        layer: the located layer; aie: ``[n_layers]`` AIE per layer (last subject token).
        rows: per method (``"located"``, ``"random layer"``, ``"unedited"``), the metrics
            ``efficacy``, ``paraphrase``, ``specificity`` (fractions) and ``n``.
        edits: one row per edit (fact, new object, layers, per-edit results).
    """

    FORMAT = "lmxray.edits/1"

    layer: int
    aie: list[float]
    rows: dict[str, dict[str, float]]
    edits: list[dict[str, Any]]
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        head = ["editor", "edits", "efficacy", "paraphrase", "specificity"]
        body = [
            [k, int(v["n"]), v["efficacy"], v["paraphrase"], v["specificity"]]
            for k, v in self.rows.items()
        ]
        aie = ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(self.aie))
        return format_table(
            head,
            body,
            title=f"ROME rank-one edits, each alone (located layer {self.layer}; "
            f"MLP AIE at the last subject token: {aie})",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "model": self.model_name,
            "layer": self.layer,
            "aie": self.aie,
            "rows": self.rows,
            "edits": self.edits,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditReport:
        return cls(
            layer=int(d["layer"]),
            aie=[float(v) for v in d["aie"]],
            rows=d["rows"],
            edits=d["edits"],
            model_name=d.get("model", ""),
            info=d.get("info", {}),
        )


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
    seed: int = 0,
    progress: bool = True,
    **edit_kwargs: Any,
) -> EditReport:
    """Apply ``n_edits`` counterfactual edits one at a time and measure them.

    Args:
        facts: dicts with ``prompt``, ``subject``, ``answer``, ``relation`` and ``subject_text``
            (as :func:`lmxray.internals._zoo.facts` gives); facts sharing ``subject_text`` and
            ``relation`` are paraphrases (other templates) of each other.
        n_edits: edits to make (facts the model gets right, with at least one paraphrase).
        layer: edit layer; default: :func:`locate_layer` on ``trace_facts_n`` known facts.
        cov_texts: text for the key covariance (default: 300 zoo training texts).
        n_specificity: other known facts checked after each edit.
        compare_random: also edit a random other layer (seeded) per fact.
        **edit_kwargs: passed to :func:`rome_edit`.
    """
    from tqdm.auto import tqdm

    from ..zoo import corpus

    facts = list(facts)
    known = _top1(model, [(f["prompt"], f["answer"]) for f in facts])
    groups: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(facts):
        groups.setdefault((str(f.get("subject_text")), str(f.get("relation"))), []).append(i)
    cands = [
        i
        for i in range(len(facts))
        if known[i]
        and len(groups[(str(facts[i].get("subject_text")), str(facts[i].get("relation")))]) > 1
    ]
    rng = random.Random(seed)
    rng.shuffle(cands)
    # one edit per (subject, relation)
    chosen, seen = [], set()
    for i in cands:
        g = (str(facts[i].get("subject_text")), str(facts[i].get("relation")))
        if g not in seen:
            seen.add(g)
            chosen.append(i)
        if len(chosen) == n_edits:
            break
    if len(chosen) < n_edits:
        raise InputError(
            f"only {len(chosen)} known facts with paraphrases; need {n_edits} (pass more facts)"
        )
    known_idx = [i for i in range(len(facts)) if known[i]]
    n_l = site_map(model).n_layers
    aie = np.full(n_l, np.nan)
    if layer is None:
        trace_set = [facts[i] for i in known_idx if i not in set(chosen)][:trace_facts_n] or [
            facts[i] for i in chosen
        ]
        layer, aie = locate_layer(model, trace_set, seed=seed)
    layer = int(layer) % n_l
    texts = list(cov_texts) if cov_texts is not None else corpus("train", 300, seed=seed)
    covs: dict[int, torch.Tensor] = {}

    def cov_at(ly: int) -> torch.Tensor:
        if ly not in covs:
            covs[ly] = key_covariance(model, ly, texts)
        return covs[ly]

    new_obj = counterfactuals([facts[i] for i in chosen], facts, seed=seed)
    editors = {"located": lambda i: layer}
    if compare_random and n_l > 1:
        rl = random.Random(seed + 1)
        rand_layers = {i: rl.choice([x for x in range(n_l) if x != layer]) for i in chosen}
        editors["random layer"] = lambda i: rand_layers[i]
    rows: dict[str, dict[str, list[float]]] = {
        k: {"efficacy": [], "paraphrase": [], "specificity": []} for k in ["unedited", *editors]
    }
    edits_out = []
    srng = random.Random(seed + 2)
    bar = tqdm(total=len(chosen) * len(editors), desc="rome edits", disable=not progress)
    try:
        for k, i in enumerate(chosen):
            f = facts[i]
            para = [
                j for j in groups[(str(f.get("subject_text")), str(f.get("relation")))] if j != i
            ]
            others = [
                j
                for j in known_idx
                if (str(facts[j].get("subject_text")) != str(f.get("subject_text")))
            ]
            spec = srng.sample(others, min(n_specificity, len(others)))
            target = " " + new_obj[k].strip() if not new_obj[k].startswith(" ") else new_obj[k]
            probe_e = [(f["prompt"], target)]
            probe_p = [(facts[j]["prompt"], target) for j in para]
            probe_s = [(facts[j]["prompt"], facts[j]["answer"]) for j in spec]
            row: dict[str, Any] = {
                "prompt": f["prompt"],
                "subject": f.get("subject_text"),
                "old": f["answer"],
                "new": target,
            }
            res = {
                "unedited": (_top1(model, probe_e), _top1(model, probe_p), _top1(model, probe_s))
            }
            for name, pick in editors.items():
                ly = pick(i)
                ed = rome_edit(
                    model,
                    f["prompt"],
                    f["subject"],
                    target,
                    layer=ly,
                    cov=cov_at(ly),
                    **edit_kwargs,
                )
                with ed.applied(model):
                    res[name] = (
                        _top1(model, probe_e),
                        _top1(model, probe_p),
                        _top1(model, probe_s),
                    )
                row[f"{name} layer"] = ly
                row[f"{name} p_target_opt"] = ed.info["p_target"]
                bar.update(1)
            for name, (e, p, s) in res.items():
                rows[name]["efficacy"].append(float(e.mean()))
                rows[name]["paraphrase"].append(float(p.mean()) if len(p) else np.nan)
                rows[name]["specificity"].append(float(s.mean()) if len(s) else np.nan)
                row[name] = {
                    "efficacy": bool(e.all()),
                    "paraphrase": float(p.mean()) if len(p) else None,
                    "specificity": float(s.mean()) if len(s) else None,
                }
            edits_out.append(row)
    finally:
        bar.close()
    summary = {
        name: {"n": len(chosen), **{m: float(np.nanmean(v)) for m, v in d.items()}}
        for name, d in rows.items()
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
