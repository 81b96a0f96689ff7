"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME).

Three runs of a fact prompt such as "The Eiffel Tower is located in" → " Paris":

1. clean: ``P[o]``, the probability of the answer;
2. corrupted: Gaussian noise of standard deviation ``ν = 3 σ`` (σ: the standard deviation of
   token embeddings) is added to the token embeddings of the *subject* ("The Eiffel Tower"):
   ``P*[o]``, averaged over ``n_samples`` noise draws (10 in the paper);
3. corrupted-with-restoration: the same noise, but one hidden state (layer ``l``, token ``i``)
   is set back to its clean value: ``P*_{clean h_i^l}[o]``.

The *indirect effect* of a state is ``IE = P*_{clean h}[o] - P*[o]``, the *total effect*
``TE = P[o] - P*[o]``; their averages over facts are the AIE and ATE. Hidden states are the
block outputs (``resid_post``); for MLP and attention outputs a window of ``window`` layers
around ``l`` (10 in the paper) is restored together. On GPT-2 XL the paper finds the AIE of
single states peaking in middle layers at the last subject token (8.7% at layer 15), and
early-site MLP restorations much stronger than attention ones (6.6% vs 1.6%).

Every restoration of a prompt is one row of a batched sweep (:mod:`._sweep`) that shares the
noise samples and reuses the corrupted run's KV cache before the restored token.
:func:`trace_facts` averages over a dataset in ROME's token buckets (first / middle / last subject
token, first subsequent token, further tokens, last token), streams each fact to a JSONL
checkpoint and resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..hooks import prepare_inputs, run_with_cache
from ..io import check_output, dumps, from_jsonable
from ..memory import check_batch_size
from ..model import Model
from ..result import Result
from ..sites import site_map
from ._sweep import BaseEdit, Job, Write, base_metric, sweep
from .patching import make_metric, token_id

__all__ = [
    "TraceResult", "TraceSummary", "causal_trace", "trace_facts", "subject_positions",
    "embedding_std", "BUCKETS", "TRACE_KINDS", "DEFAULT_WINDOW", "CHECKPOINT_FORMAT",
]

TRACE_KINDS = ("resid_post", "mlp.out", "attn.out")
DEFAULT_WINDOW = 10  # the paper's; ``lmxray trace --window`` has the same default (a test checks)
CHECKPOINT_FORMAT = "lmxray.trace-checkpoint/1"
BUCKETS = ["first subject", "middle subject", "last subject", "first subsequent", "further tokens", "last token"]


def subject_positions(model: Model, prompt: str, subject: Any) -> list[int]:
    """Token positions of the subject in ``model.encode(prompt)``.

    ``subject``: a substring of the prompt (its first occurrence), a ``(start, end)`` token range,
    or a list of token positions.
    """
    n = len(model.encode(prompt))
    if isinstance(subject, tuple) and len(subject) == 2 and all(isinstance(v, int) for v in subject):
        pos = list(range(subject[0], subject[1]))
    elif isinstance(subject, list | range) and subject and all(isinstance(v, int | np.integer) for v in subject):
        pos = sorted(int(v) for v in subject)
    elif isinstance(subject, str) and subject:
        start = prompt.find(subject)
        if start < 0:
            raise InputError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
        end = start + len(subject)
        enc = model.tokenizer(prompt, return_offsets_mapping=True)
        offsets = enc.get("offset_mapping")
        if offsets is None:
            raise InputError("this tokenizer gives no offsets; pass the subject as a (start, end) token range")
        pos = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    else:
        raise InputError(f"subject must be a substring, a (start, end) token range or positions, got {subject!r}")
    if not pos or min(pos) < 0 or max(pos) >= n:
        raise InputError(f"subject positions {pos} do not fit the prompt's {n} tokens")
    return pos


def embedding_std(model: Model, token_ids: Iterable[int] | None = None) -> float:
    """Standard deviation of token-embedding entries (over ``token_ids``, or the whole vocabulary)."""
    with torch.no_grad():
        if token_ids is None:
            emb = model.embedding_matrix
        else:
            ids = sorted({int(t) for t in token_ids})
            if not ids:
                raise InputError("no tokens to estimate the embedding std from")
            emb = model.embed(torch.tensor(ids, device=model.device))
        return float(emb.float().std())


@dataclass
class TraceResult(Result):
    """Causal tracing of one prompt.

    Attributes:
        tokens: prompt tokens (``L``).
        subject: ``(first, last + 1)`` token range that was corrupted (``subject_tokens`` lists
            every corrupted position).
        answer: the answer token; ``p_clean`` / ``p_corrupt``: its probability on the clean and
            corrupted runs.
        restored: kind → ``[n_layers, L]`` P(answer) after restoring that state.
        noise_std / n_samples / window: the corruption and the restoration window as run (the
            window asked for, when the model's depth capped it, is ``info["window_requested"]``).

    Views: ``show()``, ``to_html()``, ``to_png(path, kind="resid_post")``.
    """

    FORMAT: ClassVar[str] = "lmxray.trace/1"

    tokens: list[str]
    subject: tuple[int, int]
    subject_tokens: list[int]
    answer: str
    p_clean: float
    p_corrupt: float
    restored: dict[str, np.ndarray]
    noise_std: float
    n_samples: int
    window: int
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def indirect_effect(self, kind: str = "resid_post") -> np.ndarray:
        """``[n_layers, L]``: restored probability minus the corrupted one."""
        return self.restored[kind] - self.p_corrupt

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupt

    def buckets(self, kind: str = "resid_post") -> np.ndarray:
        """``[n_layers, 6]`` indirect effect averaged in ROME's token buckets (NaN if empty)."""
        ie = self.indirect_effect(kind)
        first, last = self.subject[0], self.subject[1] - 1
        L = ie.shape[1]

        def mean(cols: Sequence[int]) -> np.ndarray:
            cols = [c for c in cols if 0 <= c < L]
            return ie[:, cols].mean(1) if cols else np.full(ie.shape[0], np.nan)

        return np.stack([
            mean([first]), mean(range(first + 1, last)), mean([last]),
            mean([last + 1]),
            mean(range(last + 2, L - 1)), mean([L - 1]),
        ], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT, "model": self.model_name, "tokens": self.tokens,
            "subject": list(self.subject), "subject_tokens": self.subject_tokens, "answer": self.answer,
            "p_clean": self.p_clean, "p_corrupt": self.p_corrupt, "restored": self.restored,
            "noise_std": self.noise_std, "n_samples": self.n_samples, "window": self.window,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceResult:
        return cls(
            tokens=list(d["tokens"]), subject=(int(d["subject"][0]), int(d["subject"][1])),
            subject_tokens=[int(v) for v in d["subject_tokens"]], answer=d["answer"],
            p_clean=float(d["p_clean"]), p_corrupt=float(d["p_corrupt"]),
            restored={k: from_jsonable(v) for k, v in d["restored"].items()},
            noise_std=float(d["noise_std"]), n_samples=int(d["n_samples"]), window=int(d["window"]),
            model_name=d.get("model", ""), info=d.get("info", {}),
        )

    def to_png(self, path: str | os.PathLike[str] | None = None, kind: str = "resid_post", **kw: Any) -> bytes:
        """A PNG heat map of P(answer) after restoring ``kind`` (rows: tokens, columns: layers)."""
        return super().to_png(path, kind=kind, **kw)


def causal_trace(
    model: Model,
    prompt: str,
    subject: Any,
    answer: str | int | None = None,
    *,
    kinds: Sequence[str] = TRACE_KINDS,
    window: int = DEFAULT_WINDOW,
    noise: float = 3.0,
    noise_std: float | None = None,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    prefix_reuse: bool = True,
    progress: bool = False,
) -> TraceResult:
    """ROME causal tracing of one prompt: restore each (layer, token) state and measure P(answer).

    Args:
        model: the lmxray Model.
        prompt: the fact prompt (e.g. "The Eiffel Tower is located in").
        subject: the subject as a substring, a ``(start, end)`` token range or token positions.
        answer: the answer token (default: the clean run's top token).
        kinds: ``resid_post`` (single states), ``mlp.out`` and ``attn.out`` (windows).
        window: layers restored together for ``mlp.out``/``attn.out`` (paper: 10; capped by
            the model's depth).
        noise / noise_std: noise std is ``noise * σ`` with σ the embedding std over the whole
            vocabulary, unless ``noise_std`` gives it directly.
        n_samples: noise draws, each a base row of every restoration.
        seed: noise seed.

    Returns:
        :class:`TraceResult`.
    """
    _check_options(kinds, window, noise if noise_std is None else noise_std, n_samples)
    check_batch_size(batch_size, "batch size")  # before any forward pass
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; give the fact prompt to trace (e.g. 'The capital of France is')")
    sm = site_map(model)
    _, _, _, seqs = prepare_inputs(model, [prompt])
    ids = seqs[0]
    subj = subject_positions(model, prompt, subject)
    std = float(noise_std) if noise_std is not None else noise * embedding_std(model)
    clean = run_with_cache(model, [ids], cache=[n for k in kinds for n in sm.by_layer(k)])
    probs = torch.softmax(clean.logits[0, -1].float(), -1)
    a_id = token_id(model, answer) if answer is not None else int(probs.argmax())
    fn = make_metric("prob", a_id)
    gen = torch.Generator().manual_seed(int(seed))
    noise_t = torch.randn((n_samples, len(subj), model.d_model), generator=gen) * std
    edits = [BaseEdit("embed", subj, noise_t.to(model.device, model.dtype), mode="add")]
    p_corr = float(base_metric(model, ids, fn, n_base=n_samples, base_edits=edits)[0].mean())
    n_l, L = sm.n_layers, len(ids)
    w = min(window, n_l)
    jobs: list[Job] = []
    for k in kinds:
        for layer in range(n_l):
            if k == "resid_post":
                layers = [layer]
            else:
                layers = list(range(max(0, layer - w // 2), min(n_l, layer - (-w // 2))))
            for p in range(L):
                jobs.append(Job(tuple(Write(sm.name(k, ly), p) for ly in layers)))
    info: dict[str, Any] = {"seed": seed, "noise": noise if noise_std is None else None, "kinds": list(kinds),
                            "top_clean": model.token_strings([int(probs.argmax())])[0], "window_requested": window}
    vals = sweep(model, ids, jobs, fn, source=clean, n_base=n_samples, base_edits=edits,
                 prefix_reuse=prefix_reuse, batch_size=batch_size, memory_budget=memory_budget,
                 progress="causal tracing" if progress else False, info=info)
    restored = {k: vals[i * n_l * L:(i + 1) * n_l * L].reshape(n_l, L).astype(np.float32)
                for i, k in enumerate(kinds)}
    return TraceResult(
        tokens=model.token_strings(ids), subject=(min(subj), max(subj) + 1), subject_tokens=subj,
        answer=model.token_strings([a_id])[0], p_clean=float(probs[a_id]), p_corrupt=p_corr,
        restored=restored, noise_std=std, n_samples=n_samples, window=w, model_name=model.name, info=info,
    )


def _check_options(kinds: Sequence[str], window: Any, noise: Any, n_samples: Any) -> None:
    for name, v in (("n_samples", n_samples), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise InputError(f"{name} must be a whole number of at least 1, got {v!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0 or noise == float("inf"):
        raise InputError(f"the noise must be a finite number of at least 0, got {noise!r}")
    if isinstance(kinds, str) or not kinds:
        raise InputError(f"kinds must be a non-empty list of {', '.join(TRACE_KINDS)}, got {kinds!r}")
    for k in kinds:
        if k not in TRACE_KINDS:
            raise InputError(f"cannot trace {k!r}; use resid_post, mlp.out or attn.out")


@dataclass
class TraceSummary(Result):
    """Causal tracing averaged over facts (ROME Figure 2 style).

    Attributes:
        aie: kind → ``[n_layers, 6]`` average indirect effect per token bucket (:data:`BUCKETS`).
        p_clean / p_corrupt: mean probabilities (ATE = their difference).
        n / n_skipped: facts traced, and facts skipped because the model did not know them.
    """

    FORMAT: ClassVar[str] = "lmxray.trace-summary/1"

    aie: dict[str, np.ndarray]
    p_clean: float
    p_corrupt: float
    n: int
    n_skipped: int
    buckets: list[str] = field(default_factory=lambda: list(BUCKETS))
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def table(self, kind: str = "resid_post") -> str:
        """The AIE table (layers × buckets) as fixed-width text, with the peak marked."""
        m = self.aie[kind]
        head = f"{'layer':>5} " + " ".join(f"{b[:16]:>16}" for b in self.buckets)
        lines = [f"AIE of restoring {kind} (mean over {self.n} facts; ATE {self.p_clean - self.p_corrupt:.4f})", head]
        peak = np.unravel_index(np.nanargmax(m), m.shape) if np.isfinite(m).any() else None
        for i, row in enumerate(m):
            cells = []
            for j, v in enumerate(row):
                mark = "*" if peak is not None and (i, j) == tuple(peak) else " "
                cells.append(f"{'nan' if not np.isfinite(v) else f'{v:.4f}':>15}{mark}")
            lines.append(f"{i:>5} " + " ".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "model": self.model_name, "aie": self.aie, "buckets": self.buckets,
                "p_clean": self.p_clean, "p_corrupt": self.p_corrupt, "n": self.n,
                "n_skipped": self.n_skipped, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceSummary:
        return cls(aie={k: from_jsonable(v) for k, v in d["aie"].items()}, p_clean=float(d["p_clean"]),
                   p_corrupt=float(d["p_corrupt"]), n=int(d["n"]), n_skipped=int(d["n_skipped"]),
                   buckets=list(d.get("buckets", BUCKETS)), model_name=d.get("model", ""), info=d.get("info", {}))

    def to_png(self, path: str | os.PathLike[str] | None = None, kind: str = "resid_post", **kw: Any) -> bytes:
        """A PNG heat map of the AIE of restoring ``kind`` (rows: buckets, columns: layers)."""
        return super().to_png(path, kind=kind, **kw)


class _Checkpoint:
    """A JSONL checkpoint of :func:`trace_facts`: a header row naming its run (format, model,
    options, a fingerprint of the facts), then one row per traced fact.

    An existing file is resumed only when its header names the same run; any other non-empty
    file is refused, never appended to. The header is written with the first fact's row, so a
    run that fails before any fact leaves no header-only file.
    """

    def __init__(self, path: str | os.PathLike[str] | None, header: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.header = json.loads(dumps({"format": CHECKPOINT_FORMAT, **header}))
        self.done: dict[int, dict[str, Any]] = {}
        self._fresh = True
        self._cut = False  # the file ends in a line cut by an interrupted run
        if self.path is None:
            return
        check_output(self.path)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()

    def _read(self) -> None:
        if self.path is None:  # pragma: no cover - only called with a path
            return
        where = f"--checkpoint {self.path}"
        try:
            lines = self.path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(f"{where} is not a trace checkpoint (not UTF-8 text); give a new file name") from None
        try:
            head = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or head.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{where} is not a trace checkpoint (its first line is not a {CHECKPOINT_FORMAT} "
                             "header); give a new file name, or delete the file if it is yours to lose")
        diff = _differences(head, self.header)
        if diff:
            raise InputError(f"{where} is the checkpoint of another run ({', '.join(diff)} differ); rerun "
                             "with that run's options or give a new file name")
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            if isinstance(row, dict) and isinstance(row.get("index"), int):
                self.done[row["index"]] = row
        self._fresh = False
        self._cut = not self.path.read_bytes().endswith(b"\n")

    def add(self, row: dict[str, Any]) -> None:
        self.done[int(row["index"])] = row
        if self.path is None:
            return
        text = (dumps(self.header) + "\n" if self._fresh else "\n" if self._cut else "") + \
            json.dumps(row, allow_nan=True) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
        self._fresh = self._cut = False


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the fields whose values differ (options by name)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} vs {b!r}" if k != "facts" else f"{prefix}the facts")
    return out


def _fingerprint(items: Sequence[tuple[str, Any, Any]]) -> str:
    text = json.dumps([[p, s if isinstance(s, str) else list(s), str(a)] for p, s, a in items])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _trace_one(model: Model, i: int, prompt: str, positions: list[int], answer: Any, std: float,
               opts: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint row of fact ``i``: its bucketed effects, or why it was skipped."""
    row: dict[str, Any] = {"index": i}
    a_id = token_id(model, answer)
    top = int(model.logits(prompt)[-1].argmax())
    if opts["only_known"] and top != a_id:
        row["skipped"] = "unknown"
        return row
    r = causal_trace(model, prompt, positions, a_id, kinds=opts["kinds"], window=opts["window"], noise_std=std,
                     n_samples=opts["n_samples"], seed=opts["seed"] + i, batch_size=opts["batch_size"],
                     memory_budget=opts["memory_budget"])
    row.update({"p_clean": r.p_clean, "p_corrupt": r.p_corrupt,
                "buckets": {k: r.buckets(k).tolist() for k in opts["kinds"]}})
    if "oom_backoff" in r.info:
        row["oom_backoff"] = r.info["oom_backoff"]
    return row


def _trace_unit(model: Model, unit: tuple[Any, ...]) -> dict[str, Any]:
    return _trace_one(model, *unit)


def _summary(model: Model, done: dict[int, dict[str, Any]], n_items: int, kinds: Sequence[str],
             info: dict[str, Any]) -> TraceSummary:
    rows = [done[i] for i in range(n_items) if i in done and "skipped" not in done[i]]
    if not rows:
        raise InputError("the model knows none of these facts (its top token is never the answer); "
                         "pass only_known=False to trace them anyway")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty bucket everywhere stays NaN
        aie = {k: np.nanmean(np.stack([np.asarray(r["buckets"][k], dtype=np.float64) for r in rows]), axis=0)
               .astype(np.float32) for k in kinds}
    backoffs = [b for r in rows for b in r.get("oom_backoff", [])]
    if backoffs:
        info = {**info, "oom_backoff": backoffs}
    return TraceSummary(
        aie=aie, p_clean=float(np.mean([r["p_clean"] for r in rows])),
        p_corrupt=float(np.mean([r["p_corrupt"] for r in rows])), n=len(rows),
        n_skipped=n_items - len(rows), model_name=model.name, info=info,
    )


def trace_facts(
    model: Model,
    examples: Sequence[Any],
    *,
    kinds: Sequence[str] = TRACE_KINDS,
    window: int = DEFAULT_WINDOW,
    noise: float = 3.0,
    n_samples: int = 10,
    seed: int = 0,
    only_known: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    executor: Any = None,
) -> TraceSummary:
    """Average causal tracing over facts, in ROME's token buckets.

    Args:
        examples: items with ``prompt``, ``subject`` (substring, token range or positions — zoo
            examples' ``evidence``) and ``target``/``answer``; dicts, objects or
            ``(prompt, subject, answer)`` tuples.
        only_known: skip facts whose answer is not the model's top token on the clean prompt
            (ROME traces known facts).
        noise: ν = noise × σ, σ the std of the embeddings of every subject token of ``examples``.
        checkpoint: a JSONL file; its first row names the run (model, options, facts), then each
            traced fact is appended as it finishes. Rerunning with the same file and options skips
            the facts already in it (resume after an interruption); a file that is not such a
            checkpoint, or the checkpoint of another run, is refused.
        executor: where the facts are traced (``executor.map(fn, units)``, results in order):
            ``None`` here, or :class:`lmxray.jobs.RayExecutor`; the summary is the same.

    Returns:
        :class:`TraceSummary`.
    """
    _check_options(kinds, window, noise, n_samples)
    check_batch_size(batch_size, "batch size")  # before any forward pass
    items = [_as_fact(e) for e in examples]
    if not items:
        raise InputError("no facts to trace")
    subj_ids: list[int] = []
    positions = []
    for prompt, subject, _ in items:
        pos = subject_positions(model, prompt, subject)
        positions.append(pos)
        ids = model.encode(prompt)
        subj_ids += [ids[p] for p in pos]
    std = noise * embedding_std(model, subj_ids)
    opts = {"kinds": list(kinds), "window": int(window), "noise": float(noise), "n_samples": int(n_samples),
            "seed": int(seed), "only_known": bool(only_known)}
    ck = _Checkpoint(checkpoint, {"model": model.name, "options": opts, "n_facts": len(items),
                                  "facts": _fingerprint(items)})
    opts = {**opts, "batch_size": batch_size, "memory_budget": memory_budget}
    units = [(i, p, positions[i], a, std, opts) for i, (p, _s, a) in enumerate(items) if i not in ck.done]
    rows = (_trace_unit(model, u) for u in units) if executor is None else executor.map(_trace_unit, units)
    for row in tqdm(rows, desc="causal tracing", total=len(items), initial=len(items) - len(units),
                    disable=None if progress else True):
        ck.add(row)
    return _summary(model, ck.done, len(items), kinds,
                    {"noise_std": std, "noise": noise, "n_samples": n_samples, "window": min(window, model.n_layers),
                     "window_requested": window, "seed": seed, "kinds": list(kinds)})


def _as_fact(e: Any) -> tuple[str, Any, Any]:
    if isinstance(e, tuple | list) and len(e) == 3:
        return str(e[0]), e[1], e[2]
    get = (lambda k: e.get(k)) if isinstance(e, dict) else (lambda k: getattr(e, k, None))
    prompt = get("prompt")
    subject = get("subject") if get("subject") is not None else get("evidence")
    answer = get("answer") if get("answer") is not None else get("target")
    if not isinstance(prompt, str) or subject is None or answer is None:
        raise InputError("each fact needs a prompt, a subject (or evidence) and an answer (or target)")
    if isinstance(subject, list | tuple) and subject and not isinstance(subject[0], int):
        raise InputError("subject positions must be ints")
    return prompt, subject, answer
