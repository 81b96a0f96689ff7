"""Context attribution: lmxray's ``attribute_context`` against the ``context-cite`` package
(ContextCite 0.0.4) on the same model, document, query, response, sources and ablation count.

    pip install --no-deps --target /tmp/cc context-cite==0.0.4     # benchmark only
    nice python benchmarks/longcontext/contextcite.py --cc-path /tmp/cc --sentences 24 --ablations 32

context-cite imports nltk and spacy at import time and downloads nltk's ``punkt_tab`` (no network
here); both are used only by its own sentence splitter, so this script gives it stub modules and
a partitioner with lmxray's sentences (same sources for both). Its chat template is set to the
plain ``{context}{query}`` prompt (the bench tokenizer has none). Both then score the same
random-ablation count; quality is measured the same way for both (``top-k log-prob drop`` with
lmxray's scorer, exact, teacher forced; and the LDS on the same held-out ablations).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_model, licence_text, sentences, write_section  # noqa: E402

from lmxray.attribution import context as C  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "longcontext-contextcite.md"
QUERY = "\n\nQuestion: what may you do with this work?\nAnswer:"


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


def run_contextcite(m, srcs, response, n_abl, batch):
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
    tok.chat_template = "{{ messages[0]['content'] }}"
    tok.padding_side = "left"
    context = "".join(srcs)
    cc = ContextCiter(m.hf, tok, context, QUERY, num_ablations=n_abl, batch_size=batch,
                      prompt_template="{context}{query}", partitioner=Fixed(context))
    cc._cache["output"] = context + QUERY + response
    t0 = time.perf_counter()
    scores = cc.get_attributions(verbose=False)
    return np.asarray(scores, dtype=np.float64), time.perf_counter() - t0, cc


def quality(m, srcs, response, scores, top_k, held, seed):
    """Top-k drop and LDS of a score vector with lmxray's exact scorer (same for both)."""
    segs = [*srcs, QUERY]
    ctx = C.Context(C.resolve_target_fn("logprob"))
    scorer = C._Scorer(m, segs, list(range(len(srcs))), response, 1, "remove", "auto", ctx)
    y, full = scorer.values(held)
    a = C._Scorer  # noqa: F841
    # intercept of a linear prediction is irrelevant to Spearman's rank correlation
    return C._metrics(scorer, scores, 0.0, held, y, full, top_k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc-path", default="/tmp/f_cc/site")
    ap.add_argument("--sentences", type=int, default=24)
    ap.add_argument("--ablations", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.cc_path)
    _stub_imports()
    dims = dict(n_layer=2, n_embd=128, n_head=4) if args.small else {}
    m = bench_model(n_positions=2048, **dims)
    srcs = sentences(licence_text(), args.sentences)
    response = " you may copy and distribute it"
    # warm-up both
    C.attribute_context(m, "".join(srcs[:3]), query=QUERY, target=response, n_ablations=4,
                        metrics=False)
    run_contextcite(m, srcs[:3], response, 4, args.batch)
    t0 = time.perf_counter()
    ours = C.attribute_context(m, "".join(srcs), sources=srcs, query=QUERY, target=response,
                               n_ablations=args.ablations, metrics=False, seed=0)
    our_sec = time.perf_counter() - t0
    theirs, cc_sec, _ = run_contextcite(m, srcs, response, args.ablations, args.batch)
    held = np.random.default_rng(7).random((32, len(srcs))) < 0.5
    top_k = (1, 3, 5)
    q_ours = quality(m, srcs, response, ours.scores, top_k, held, 7)
    q_cc = quality(m, srcs, response, theirs, top_k, held, 7)
    n_tok = len(m.encode("".join(srcs) + QUERY))
    name = "GPT-2 2x128 (small)" if args.small else "GPT-2 6x512 (bench model)"
    lines = [
        f"### Context attribution vs context-cite 0.0.4 ({name}, {len(srcs)} sentences, "
        f"{n_tok}-token prompt, {args.ablations} ablations, response {response!r})", "",
        "| | seconds | top-1 drop | top-3 drop | top-5 drop | LDS (32 held-out) |",
        "|---|---|---|---|---|---|",
    ]
    for label, sec, q in (("lmxray attribute_context (ablation)", our_sec, q_ours),
                          (f"context-cite ContextCiter (batch {args.batch})", cc_sec, q_cc)):
        d = q["topk_drop"]
        lds = "n/a" if q["lds"] is None else f"{q['lds']:.3f}"
        lines.append(f"| {label} | {sec:.2f} | {d[1]:.3f} | {d[3]:.3f} | {d[5]:.3f} | {lds} |")
    lines += ["", f"speed-up: {cc_sec / our_sec:.1f}x; rank correlation of the two score vectors: "
              f"{np.corrcoef(np.argsort(np.argsort(ours.scores)), np.argsort(np.argsort(theirs)))[0, 1]:.2f} "
              "(different random masks)", ""]
    write_section(OUT, lines)


if __name__ == "__main__":
    main()
