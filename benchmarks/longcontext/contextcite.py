"""Context attribution: lmxray's ``attribute_context`` against the ``context-cite`` package
(ContextCite 0.0.4) on the same model, documents, queries, responses, sources and ablation count.

    pip install --no-deps --target /tmp/f_cc/site context-cite==0.0.4     # benchmark only
    nice -n 5 python benchmarks/longcontext/contextcite.py --cc-path /tmp/f_cc/site --n 24 --ablations 32

Model and documents: the embedded model ``lmxray.load()`` (lmxray-tiny) on verified examples of
the zoo task ``haystack`` (6-10 key/value sentences, the answer's evidence in one of them), so
removing a sentence matters; the sources are the item's sentences, the query its ``Query: k``
tail, the response its target. Both tools draw ``--ablations`` random masks (each source kept with
probability 1/2) and fit a Lasso (alpha 0.01); ContextCite's target is the response's logit-prob
(its default), lmxray's the summed log-probability. Quality is measured the same way for both,
with lmxray's exact scorer (teacher forced, the sources' tokens removed as in the surrogate's
ablations): the ContextCite paper's top-k log-probability drop (the k highest-scored sources
removed, all others kept: ``log p(response | all) - log p(response | all but top k)``; higher is
better) and the LDS (Spearman correlation of the linear prediction with the true value on 32
held-out random ablations, the same masks for both). Times are per document, the two tools
interleaved (the order alternates per document).

context-cite imports nltk and spacy at import time and downloads nltk's ``punkt_tab`` (no network
here); both are used only by its own sentence splitter, so this script gives it stub modules and
a partitioner with the item's sentences (same sources for both). Its chat template is set to the
plain ``{context}{query}`` prompt with the tokenizer's BOS when lmxray's encoding has one (the
zoo tokenizer has no chat template).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

import lmxray
from lmxray import zoo
from lmxray.zoo import tasks

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, write_section  # noqa: E402

from lmxray.attribution import context as C  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "longcontext-contextcite.md"


def _stub_imports() -> None:
    nltk = types.ModuleType("nltk")
    nltk.download = lambda *a, **k: True  # type: ignore[attr-defined]
    nltk.sent_tokenize = lambda text: [text]  # type: ignore[attr-defined]
    sys.modules.setdefault("nltk", nltk)
    spacy = types.ModuleType("spacy")
    spacy.Language = type("Language", (), {})  # type: ignore[attr-defined]  # datasets checks it
    lang = types.ModuleType("spacy.lang")
    en = types.ModuleType("spacy.lang.en")
    en.English = object  # type: ignore[attr-defined]
    sys.modules.setdefault("spacy", spacy)
    sys.modules.setdefault("spacy.lang", lang)
    sys.modules.setdefault("spacy.lang.en", en)


def run_contextcite(m, srcs, query, response, n_abl, batch):
    """ContextCite's scores and seconds (its masks are seeded 0..n_abl - 1, not settable)."""
    from context_cite import ContextCiter
    from context_cite.context_partitioner import BaseContextPartitioner

    class Fixed(BaseContextPartitioner):
        def split_context(self):
            pass

        @property
        def num_sources(self):
            return len(srcs)

        def get_source(self, index):
            return srcs[index]

        def get_context(self, mask=None):
            keep = np.ones(len(srcs), bool) if mask is None else mask
            return "".join(s for s, k in zip(srcs, keep, strict=True) if k)

    tok = m.tokenizer
    bos = m.encode("x")[0] == tok.bos_token_id
    tok.chat_template = ("{{ bos_token }}" if bos else "") + "{{ messages[0]['content'] }}"
    tok.padding_side = "left"
    context = "".join(srcs)
    cc = ContextCiter(m.hf, tok, context, query, num_ablations=n_abl, batch_size=batch,
                      prompt_template="{context}{query}", partitioner=Fixed(context))
    cc._cache["output"] = cc._get_prompt_ids(return_prompt=True)[1] + response
    t0 = time.perf_counter()
    scores = cc.get_attributions(verbose=False)
    assert tok.decode(cc._response_ids).strip() == response.strip(), tok.decode(cc._response_ids)
    return np.asarray(scores, dtype=np.float64), time.perf_counter() - t0


def quality(m, srcs, query, response, scores, top_k, held):
    """Top-k drop and LDS of a score vector with lmxray's exact scorer (same for both)."""
    segs = [*srcs, query]
    ctx = C.Context(C.resolve_target_fn("logprob"))
    scorer = C._Scorer(m, segs, list(range(len(srcs))), response, 1, "remove", "auto", ctx)
    y, full = scorer.values(held)
    # the intercept of a linear prediction is irrelevant to Spearman's rank correlation
    return C._metrics(scorer, scores, 0.0, held, y, full, top_k)


def documents(n, seed):
    items = tasks.generate("haystack", n=n, seed=seed)
    ex = zoo.dataset("haystack", n=n, seed=seed)
    for it, e in zip(items, ex, strict=True):
        if e.verified:
            end = it.meta["context_end"]
            yield ([it.prompt[a:b] for a, b in it.meta["sources"]], it.prompt[end:], it.target,
                   it.meta["evidence_source"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc-path", default="/tmp/f_cc/site")
    ap.add_argument("--n", type=int, default=24, help="haystack items drawn (verified ones used)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ablations", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.cc_path)
    _stub_imports()
    m = lmxray.load()
    docs = list(documents(args.n, args.seed))
    srcs, query, response, _ = docs[0]  # warm-up both
    C.attribute_context(m, "".join(srcs), sources=srcs, query=query, target=response,
                        n_ablations=4, metrics=False)
    run_contextcite(m, srcs, query, response, 4, args.batch)
    top_k = (1, 3, 5)
    rows = {"lmxray": [], "cc": []}
    for i, (srcs, query, response, evidence) in enumerate(docs):
        held = np.random.default_rng([7, i]).random((32, len(srcs))) < 0.5
        res = {}
        for who in (("lmxray", "cc") if i % 2 == 0 else ("cc", "lmxray")):
            if who == "lmxray":
                t0 = time.perf_counter()
                r = C.attribute_context(m, "".join(srcs), sources=srcs, query=query,
                                        target=response, n_ablations=args.ablations,
                                        metrics=False, seed=i)
                res[who] = (r.scores, time.perf_counter() - t0)
            else:
                res[who] = run_contextcite(m, srcs, query, response, args.ablations, args.batch)
        for who, (scores, sec) in res.items():
            q = quality(m, srcs, query, response, scores, top_k, held)
            rows[who].append({"sec": sec, **{f"top{k}": q["topk_drop"][k] for k in top_k},
                              "lds": q["lds"], "first": int(np.argmax(scores)) == evidence})
        print(i, {w: rows[w][-1] for w in rows}, flush=True)
    table(docs, rows, args)


def table(docs, rows, args):
    n_src = [len(d[0]) for d in docs]
    lines = [
        f"### Context attribution vs context-cite 0.0.4 (lmxray-tiny on {len(docs)} verified "
        f"haystack documents, {min(n_src)}-{max(n_src)} sentences each, {args.ablations} random "
        f"ablations each, keep prob 0.5, Lasso alpha 0.01; means over documents; load average "
        f"{load_average()})", "",
        "| | seconds per document | top-1 drop | top-3 drop | top-5 drop | LDS (32 held-out) | "
        "evidence ranked first |",
        "|---|---|---|---|---|---|---|",
    ]
    for who, label in (("lmxray", "lmxray attribute_context (ablation)"),
                       ("cc", f"context-cite ContextCiter (batch {args.batch})")):
        rs = rows[who]
        lds = [r["lds"] for r in rs if r["lds"] is not None]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("sec", "top1", "top3", "top5")}
        lines.append(
            f"| {label} | {mean['sec']:.3f} | {mean['top1']:.2f} | {mean['top3']:.2f} | "
            f"{mean['top5']:.2f} | {np.mean(lds) if lds else float('nan'):.3f} | "
            f"{sum(r['first'] for r in rs)}/{len(rs)} |")
    ratio = np.mean([r["sec"] for r in rows["cc"]]) / np.mean([r["sec"] for r in rows["lmxray"]])
    lines += ["", f"speed-up (mean seconds): {ratio:.1f}x. Top-k drop: log-probability of the "
              "response lost when the k highest-scored sources are removed (higher is better).",
              ""]
    write_section(OUT, lines)


if __name__ == "__main__":
    main()
