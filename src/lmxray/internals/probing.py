"""Linear probes on cached activations, with control tasks and selectivity.

A probe is a logistic-regression classifier (scikit-learn) trained to predict a label from one
site's activation at one token position, per layer, with k-fold cross-validation. High probe
accuracy shows that the information is *linearly decodable*, not that the model uses it.

**Control tasks** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks",
arXiv:1909.03368): give every *type* (by default: the token at the probed position; or any key,
e.g. the subject) a random label drawn from the task's label distribution. A probe that scores
well on the control task is memorising types, not reading the property. **Selectivity** is task
accuracy minus control accuracy; a good probe is accurate *and* selective. The same folds serve
both tasks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..hooks import run_with_cache
from ..io import from_jsonable
from ..memory import check_batch_size
from ..model import Model
from ..result import Result
from ..sites import site_map

__all__ = ["ProbeResult", "probe", "collect", "control_labels"]


@dataclass
class ProbeResult(Result):
    """Cross-validated probe accuracy per layer.

    Attributes:
        layers: the probed layers (``-1`` = the embeddings, i.e. ``resid_pre`` of block 0).
        accuracy / control_accuracy: ``[n]`` mean CV accuracy on the task and its control task.
        selectivity: ``accuracy - control_accuracy``.
        accuracy_std: ``[n]`` std over folds.
        majority: accuracy of always predicting the most frequent label.
        labels: the label set; ``n_examples`` / ``n_types``: examples and distinct control keys.
    """

    FORMAT: ClassVar[str] = "lmxray.probe/1"

    layers: list[int]
    accuracy: np.ndarray
    control_accuracy: np.ndarray
    accuracy_std: np.ndarray
    majority: float
    labels: list[str]
    n_examples: int
    n_types: int
    site: str = "resid_post"
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def selectivity(self) -> np.ndarray:
        return (self.accuracy - self.control_accuracy).astype(np.float32)

    def best(self) -> tuple[int, float, float]:
        """``(layer, accuracy, selectivity)`` of the most selective layer."""
        i = int(np.argmax(self.selectivity))
        return self.layers[i], float(self.accuracy[i]), float(self.selectivity[i])

    def table(self) -> str:
        lines = [f"probe on {self.site} ({self.n_examples} examples, {len(self.labels)} labels, "
                 f"{self.n_types} control types, majority {self.majority:.3f})",
                 f"{'layer':>6} {'accuracy':>9} {'control':>8} {'selectivity':>11}"]
        for i, layer in enumerate(self.layers):
            lines.append(f"{'embed' if layer < 0 else layer:>6} {self.accuracy[i]:>9.3f} "
                         f"{self.control_accuracy[i]:>8.3f} {self.selectivity[i]:>11.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "model": self.model_name, "site": self.site, "layers": self.layers,
                "accuracy": self.accuracy, "control_accuracy": self.control_accuracy,
                "accuracy_std": self.accuracy_std, "selectivity": self.selectivity, "majority": self.majority,
                "labels": self.labels, "n_examples": self.n_examples, "n_types": self.n_types, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        return cls(layers=[int(v) for v in d["layers"]], accuracy=from_jsonable(d["accuracy"]),
                   control_accuracy=from_jsonable(d["control_accuracy"]),
                   accuracy_std=from_jsonable(d["accuracy_std"]), majority=float(d["majority"]),
                   labels=[str(v) for v in d["labels"]], n_examples=int(d["n_examples"]),
                   n_types=int(d["n_types"]), site=d.get("site", "resid_post"), model_name=d.get("model", ""),
                   info=d.get("info", {}))


def _positions(prompts: Sequence[Any], position: int | Sequence[int]) -> list[int]:
    if isinstance(position, int | np.integer):
        return [int(position)] * len(prompts)
    pos = [int(p) for p in position]
    if len(pos) != len(prompts):
        raise InputError(f"need one position per prompt (got {len(pos)} for {len(prompts)} prompts)")
    return pos


@torch.no_grad()
def collect(model: Model, prompts: Sequence[Any], *, site: str = "resid_post", position: int | Sequence[int] = -1,
            batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, list[int], list[int]]:
    """Activations at one token position of each prompt, for every layer.

    Args:
        site: ``resid_post`` (rows: embeddings then every block output), ``resid_pre``,
            ``attn.out`` or ``mlp.out``.
        position: a token index for all prompts (negative: from the end), or one per prompt.

    Returns:
        ``(X [n_prompts, n_rows, d], layers, token_ids_at_position)``.
    """
    check_batch_size(batch_size, "batch_size")
    sm = site_map(model)
    if site == "resid_post":
        names = [sm.name("resid_pre", 0)] + sm.by_layer("resid_post")
        layers = [-1] + list(range(sm.n_layers))
    elif site in ("resid_pre", "attn.out", "mlp.out"):
        names, layers = sm.by_layer(site), list(range(sm.n_layers))
    else:
        raise InputError(f"cannot probe {site!r}; use resid_post, resid_pre, attn.out or mlp.out")
    pos = _positions(prompts, position)
    seqs = [model.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    if not seqs:
        raise InputError("no prompts to probe")
    xs, keys = [], []
    for s in tqdm(range(0, len(seqs), batch_size), desc="probe activations", disable=None if progress else True, leave=False):
        batch = seqs[s:s + batch_size]
        cache = run_with_cache(model, batch, cache=names, logits=False)
        L = cache.input_ids.shape[1]
        for b, ids in enumerate(batch):
            p = pos[s + b]
            if not -len(ids) <= p < len(ids):
                raise InputError(f"position {p} is outside prompt {s + b}'s {len(ids)} tokens")
            col = L - len(ids) + (p % len(ids))
            xs.append(torch.stack([cache[n][b, col] for n in names]).float().cpu().numpy())
            keys.append(int(ids[p % len(ids)]))
    return np.stack(xs), layers, keys


def control_labels(labels: Sequence[Hashable], keys: Sequence[Hashable], seed: int = 0) -> list[Hashable]:
    """Hewitt & Liang control task: each distinct key gets a label drawn from the empirical label
    distribution; every example takes its key's label."""
    if len(labels) != len(keys):
        raise InputError("need one control key per label")
    rng = np.random.default_rng((int(seed), 0x1EA7))  # salted: independent of data drawn with `seed`
    uniq, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
    probs = counts / counts.sum()
    lookup = {str(v): v for v in labels}
    mapping: dict[Hashable, Hashable] = {}
    for k in dict.fromkeys(keys):
        mapping[k] = lookup[str(rng.choice(uniq, p=probs))]
    return [mapping[k] for k in keys]


def probe(
    model: Model,
    prompts: Sequence[Any],
    labels: Sequence[Hashable],
    *,
    site: str = "resid_post",
    position: int | Sequence[int] = -1,
    control_keys: Sequence[Hashable] | None = None,
    cv: int = 5,
    C: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> ProbeResult:
    """Cross-validated linear probes for ``labels`` at every layer, with a control task.

    Args:
        prompts: texts (or token ids), one per example.
        labels: the property to decode (any hashable; e.g. the answer's continent).
        site / position: where to read (see :func:`collect`).
        control_keys: the type of each example for the control task (default: the token id at
            the probed position).
        cv: folds (stratified when every class has at least ``cv`` examples).
        C: inverse L2 strength of the logistic regression (features are standardised).

    Returns:
        :class:`ProbeResult`.

    Example:
        >>> r = probe(m, prompts, continents, position=subject_last)   # doctest: +SKIP
        >>> print(r.table())                                          # doctest: +SKIP
    """
    from sklearn.model_selection import KFold, StratifiedKFold
    from threadpoolctl import threadpool_limits

    if len(labels) != len(prompts):
        raise InputError(f"need one label per prompt (got {len(labels)} for {len(prompts)})")
    y = np.asarray([str(v) for v in labels])
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InputError("labels hold a single class; a probe needs at least two")
    if cv < 2 or cv > len(y):
        raise InputError(f"cv must be in 2..{len(y)}")
    X, layers, tok_keys = collect(model, prompts, site=site, position=position, batch_size=batch_size,
                                  progress=progress)
    keys = list(control_keys) if control_keys is not None else tok_keys
    if len(keys) != len(y):
        raise InputError("need one control key per prompt")
    y_ctrl = np.asarray([str(v) for v in control_labels(list(y), keys, seed=seed)])
    stratify = counts.min() >= cv
    splitter = (StratifiedKFold(cv, shuffle=True, random_state=seed) if stratify
                else KFold(cv, shuffle=True, random_state=seed))
    folds = list(splitter.split(X[:, 0], y if stratify else None))
    acc = np.zeros((len(layers), cv))
    ctrl = np.zeros((len(layers), cv))
    # small fits gain nothing from BLAS threads and lose a lot to them on a busy machine
    small = X.shape[0] * X.shape[-1] < 2_000_000
    with threadpool_limits(limits=1 if small else None):
        _fit_all(X, y, y_ctrl, folds, C, acc, ctrl)
    return ProbeResult(
        layers=layers, accuracy=acc.mean(1).astype(np.float32), control_accuracy=ctrl.mean(1).astype(np.float32),
        accuracy_std=acc.std(1).astype(np.float32), majority=float(counts.max() / counts.sum()),
        labels=[str(c) for c in classes], n_examples=len(y), n_types=len(set(keys)), site=site,
        model_name=model.name,
        info={"cv": cv, "stratified": bool(stratify), "C": C, "seed": seed,
              "position": position if isinstance(position, int) else "per-example",
              "control_keys": "token at position" if control_keys is None else "given"},
    )


def _fit_all(X: np.ndarray, y: np.ndarray, y_ctrl: np.ndarray, folds: list[Any], C: float,
             acc: np.ndarray, ctrl: np.ndarray) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for li in range(X.shape[1]):
        for f, (tr, te) in enumerate(folds):
            for target, out in ((y, acc), (y_ctrl, ctrl)):
                if len(np.unique(target[tr])) < 2:
                    out[li, f] = float(np.mean(target[te] == target[tr][0]))
                    continue
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
                clf.fit(X[tr, li], target[tr])
                out[li, f] = float(clf.score(X[te, li], target[te]))
