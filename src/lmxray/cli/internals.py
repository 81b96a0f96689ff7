"""CLI commands for looking inside a model: ``lens``, ``lens-train``, ``trace``, ``heads``, ``probe``.

Mounted on the main Typer app by :func:`register` (``lmxray.cli`` calls it). Every command
follows the shared shape: a positional input, ``--model`` (default: the embedded model),
``--json`` / ``--html`` / ``--png`` outputs that are checked first and written only after the
computation succeeded (atomically), and bad input raised as an ``LmxrayError`` (one line on
stderr, exit code 2). The commands only parse options, call the Python API and print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import DeviceOpt, ModelOpt, PngOpt, ResultJsonOpt

__all__ = ["register"]

_Model = ModelOpt
_Device = DeviceOpt
_Json = ResultJsonOpt
_Html = Annotated[Path | None, typer.Option("--html", metavar="FILE", dir_okay=False,
                                              help="Write a self-contained HTML report.")]
_Png = PngOpt


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _prepare(*paths: Path | None) -> tuple[Any, Any]:
    from ._common import check_outputs
    from ._common import consoles as _consoles

    check_outputs(*paths)
    return _consoles()


def _write(result: Any, json_out: Path | None, html_out: Path | None, png_out: Path | None, err: Any,
           png: Any = None) -> None:
    from ._common import write_outputs

    write_outputs([(json_out, lambda: result.to_json() + "\n"), (html_out, lambda: result.to_html())], err)
    if png_out is not None:
        (png or result.to_png)(png_out)
        err.print(f"wrote {png_out}", style="dim", highlight=False, markup=False)


def _load(model: str | None, device: str | None) -> Any:
    from ._common import load_model

    return load_model(model, device)


# --------------------------------------------------------------------------- lens
def lens(
    prompt: Annotated[str, typer.Argument(help="The prompt to read layer by layer.", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", "-t", metavar="TEXT",
                                                  help="Token to track [default: each position's final top-1].")] = None,
    tuned: Annotated[Path | None, typer.Option("--tuned", metavar="FILE", dir_okay=False,
                                                  help="Use a tuned lens (.safetensors from lens-train).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, metavar="K", help="Top tokens per cell.")] = 5,
    position: Annotated[int, typer.Option("--position", metavar="I", help="Position shown in the terminal.")] = -1,
    model: _Model = None, device: _Device = None, json_out: _Json = None, html_out: _Html = None,
    png_out: _Png = None,
) -> None:
    """Logit lens (or tuned lens) of a prompt: top tokens, target probability and rank, KL per layer."""
    from ..internals.lens import TunedLens, logit_lens

    out, err = _prepare(json_out, html_out, png_out)
    tl = TunedLens.load(tuned) if tuned is not None else None
    m = _load(model, device)
    r = logit_lens(m, prompt, target, top_k=top_k, lens=tl)
    if not -len(r.tokens) <= position < len(r.tokens):
        raise InputError(f"--position {position} is outside the prompt's {len(r.tokens)} tokens")
    if str(json_out) != "-":
        r.show(out, position=position)
    _write(r, json_out, html_out, png_out, err)


def lens_train(
    out_file: Annotated[Path, typer.Argument(metavar="OUT", dir_okay=False, help="Where to write the lens (.safetensors).")],
    corpus: Annotated[Path | None, typer.Option("--corpus", metavar="FILE", exists=False,
                                                   help="Training text, one example per line.")] = None,
    zoo: Annotated[str, typer.Option("--zoo", metavar="TASKS",
                                     help="Zoo tasks to take text from (comma list) [default: the zoo corpus].")] = "",
    n: Annotated[int, typer.Option("--n", min=1, help="Zoo texts (per task with --zoo).")] = 2000,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 250,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="SGD learning rate (linear decay).")] = 0.3,
    held_out: Annotated[float, typer.Option("--held-out", min=0.05, max=0.9, help="Fraction kept for evaluation.")] = 0.2,
    model: _Model = None, device: _Device = None, json_out: _Json = None,
) -> None:
    """Train a tuned lens; print held-out KL(final ‖ lens) per layer for the logit and tuned lens."""
    import numpy as np

    from ..internals._result import to_jsonable
    from ..internals._zoo import texts as zoo_texts
    from ..internals.lens import TunedLens, lens_kl
    from ..io import atomic_write_text

    out, err = _prepare(out_file, json_out)
    rng = np.random.default_rng(0)
    if corpus is not None:
        if not corpus.is_file():
            raise InputError(f"no corpus file at {corpus}")
        lines = [ln.strip() for ln in corpus.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if len(lines) < 10:
            raise InputError(f"only {len(lines)} training texts in {corpus}; give at least 10")
        order = rng.permutation(len(lines))
        k = max(1, int(len(lines) * held_out))
        test = [lines[i] for i in order[:k]]
        train = [lines[i] for i in order[k:]]
        source = str(corpus)
    else:  # the zoo's train split to fit, its held-out test split to evaluate
        tasks = _split(zoo) or None
        train = zoo_texts(tasks, n=n, split="train")
        seen = set(train)
        test = [t for t in zoo_texts(tasks, n=max(20, int(n * held_out)), split="test") if t not in seen]
        source = f"zoo:{zoo or 'corpus'}"
        if not test:
            raise InputError("the zoo gave no held-out text; pass --corpus")
    m = _load(model, device)
    tl = TunedLens.fit(m, train, steps=steps, batch_size=batch_size, lr=lr)
    tl.info["corpus"] = source
    kl_logit, kl_tuned = lens_kl(m, test), lens_kl(m, test, tl)
    tl.info.update(heldout_kl_logit=kl_logit.tolist(), heldout_kl_tuned=kl_tuned.tolist())
    labels = ["embed"] + [str(i) for i in range(m.n_layers)]
    from ..internals._render import show_matrix

    show_matrix(f"held-out KL(final ‖ lens), nats ({len(test)} texts)", np.stack([kl_logit, kl_tuned]),
                ["logit lens", "tuned lens"], labels, out, fmt="{:.4f}")
    tl.save(out_file)
    err.print(f"wrote {out_file}", style="dim", highlight=False, markup=False)
    if json_out is not None:
        import json

        text = json.dumps(to_jsonable({"format": "lmxray.lens-train/1", "model": m.name, "layers": labels,
                                       "kl_logit": kl_logit, "kl_tuned": kl_tuned, "info": tl.info})) + "\n"
        if str(json_out) == "-":
            print(text, end="")
        else:
            atomic_write_text(json_out, text)


# --------------------------------------------------------------------------- trace
def trace(
    prompt: Annotated[str | None, typer.Argument(help="The clean prompt.", show_default=False)] = None,
    corrupt: Annotated[str | None, typer.Option("--corrupt", metavar="TEXT",
                                                   help="Corrupted prompt (same token count): activation patching.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", metavar="TEXT",
                                                   help="Subject substring to noise: ROME causal tracing.")] = None,
    answer: Annotated[str | None, typer.Option("--answer", metavar="TEXT", help="Answer token [default: clean top-1].")] = None,
    foil: Annotated[str | None, typer.Option("--foil", metavar="TEXT", help="Foil for the logit difference.")] = None,
    sites: Annotated[str, typer.Option("--sites", metavar="KINDS", help="Patching: comma list of resid_pre, resid_post, attn.out, mlp.out, attn.head_out.")] = "resid_pre,attn.out,mlp.out",
    positions: Annotated[str, typer.Option("--positions", metavar="each|all")] = "each",
    metric: Annotated[str, typer.Option("--metric", metavar="logit_diff|prob|logprob")] = "logit_diff",
    attribution: Annotated[bool, typer.Option("--attribution", help="Also run attribution patching and print its correlation.")] = False,
    window: Annotated[int, typer.Option("--window", min=1, help="Causal tracing: layers restored together for mlp/attn.")] = 10,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Causal tracing: noise samples.")] = 10,
    noise: Annotated[float, typer.Option("--noise", min=0.0, help="Causal tracing: noise std in embedding stds.")] = 3.0,
    zoo_facts: Annotated[int | None, typer.Option("--zoo-facts", metavar="N", min=1,
                                                     help="Trace N zoo facts and print the average table (ROME Fig. 2).")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", metavar="FILE", dir_okay=False,
                                                       help="JSONL checkpoint for --zoo-facts (resumes).")] = None,
    model: _Model = None, device: _Device = None, json_out: _Json = None, html_out: _Html = None,
    png_out: _Png = None,
) -> None:
    """Activation patching (--corrupt), causal tracing (--subject) or a facts average (--zoo-facts)."""
    modes = sum(x is not None for x in (corrupt, subject, zoo_facts))
    if modes != 1:
        raise InputError("give exactly one of --corrupt (patching), --subject (causal tracing) or --zoo-facts N")
    if zoo_facts is None and prompt is None:
        raise InputError("missing PROMPT (the clean prompt)")
    out, err = _prepare(json_out, html_out, png_out, checkpoint)
    m = _load(model, device)
    if zoo_facts is not None:
        from ..internals._zoo import facts
        from ..internals.tracing import trace_facts

        s = trace_facts(m, facts(n=zoo_facts), window=window, n_samples=samples, noise=noise,
                        checkpoint=checkpoint)
        if str(json_out) != "-":
            for kind in s.aie:
                out.print(s.table(kind), markup=False, highlight=False)
        _write(s, json_out, html_out, png_out, err)
        return
    assert prompt is not None
    if subject is not None:
        from ..internals.tracing import causal_trace

        r = causal_trace(m, prompt, subject, answer, window=window, n_samples=samples, noise=noise, progress=True)
        if str(json_out) != "-":
            from ..internals._render import show_matrix

            out.print(f"P({r.answer!r}) clean {r.p_clean:.4f}, corrupted {r.p_corrupt:.4f}", markup=False)
            show_matrix("P(answer) after restoring resid_post (rows: tokens, columns: layers)",
                        r.restored["resid_post"].T, [f"{i} {t}" for i, t in enumerate(r.tokens)],
                        [str(i) for i in range(m.n_layers)], out)
        _write(r, json_out, html_out, png_out, err)
        return
    from ..internals.patching import activation_patching, attribution_patching, compare

    kinds = _split(sites)
    r = activation_patching(m, prompt, corrupt, answer, foil, sites=kinds, positions=positions, metric=metric,
                            progress=True)
    if attribution:
        ap = attribution_patching(m, prompt, corrupt, answer, foil, sites=kinds, positions=positions, metric=metric)
        r.info["attribution_pearson_r"] = compare(r, ap)
    if str(json_out) != "-":
        r.show(out)
        if attribution:
            out.print("attribution patching vs exact, Pearson r: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in r.info["attribution_pearson_r"].items()),
                      markup=False, soft_wrap=True)
    _write(r, json_out, html_out, png_out, err)


# --------------------------------------------------------------------------- heads
def heads(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts [default: repeated random tokens].", show_default=False)] = None,
    n_seqs: Annotated[int, typer.Option("--n-seqs", min=1)] = 16,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2)] = 20,
    kind: Annotated[str, typer.Option("--kind", metavar="KIND", help="Score for the PNG: previous_token, duplicate_token, induction.")] = "induction",
    top: Annotated[int, typer.Option("--top", min=1, help="Heads listed per score.")] = 5,
    ablate_zoo: Annotated[str | None, typer.Option("--ablate-zoo", metavar="TASK",
                                                      help="Ablate the top heads on a zoo task (e.g. induction) vs random heads.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Examples of the zoo task.")] = 200,
    model: _Model = None, device: _Device = None, json_out: _Json = None, html_out: _Html = None,
    png_out: _Png = None,
) -> None:
    """Previous-token, duplicate-token and induction scores of every head (and ablation)."""
    from ..internals.heads import SCORE_KINDS, ablate_heads, head_scores, random_heads_control

    if kind not in SCORE_KINDS:
        raise InputError(f"--kind must be one of {', '.join(SCORE_KINDS)}")
    out, err = _prepare(json_out, html_out, png_out)
    m = _load(model, device)
    r = head_scores(m, prompts or None, n_seqs=n_seqs, seq_len=seq_len)
    if ablate_zoo is not None:
        from ..internals._zoo import zoo_examples

        ex = zoo_examples(ablate_zoo, "test", n)
        ps = [e["prompt"] if isinstance(e, dict) else e.prompt for e in ex]
        ts = [e["target"] if isinstance(e, dict) else e.target for e in ex]
        chosen = [h for h, _ in r.top("induction", top)]
        res = ablate_heads(m, chosen, ps, ts)
        ctrl = random_heads_control(m, len(chosen), ps, ts, exclude=chosen)
        r.info["ablation"] = {"task": ablate_zoo, "heads": chosen, **res,
                              "random": [{k: v for k, v in c.items()} for c in ctrl]}
    if str(json_out) != "-":
        for k in SCORE_KINDS:
            out.print(f"{k}: " + ", ".join(f"L{lh[0]}H{lh[1]} {v:.3f}" for lh, v in r.top(k, top)),
                      markup=False, highlight=False, soft_wrap=True)
        if ablate_zoo is not None:
            a = r.info["ablation"]
            rnd = [c["accuracy"] for c in a["random"]]
            rlp = [c["logprob"] for c in a["random"]]
            out.print(f"{ablate_zoo}: accuracy {a['base_accuracy']:.3f} → {a['accuracy']:.3f}, target log-prob "
                      f"{a['base_logprob']:.3f} → {a['logprob']:.3f} ablating the top {len(a['heads'])} induction "
                      f"heads; {len(rnd)} random sets of as many heads: accuracy mean {sum(rnd) / len(rnd):.3f} "
                      f"(min {min(rnd):.3f}), log-prob mean {sum(rlp) / len(rlp):.3f}",
                      markup=False, highlight=False, soft_wrap=True)
    _write(r, json_out, html_out, png_out, err, png=lambda p: r.to_png(p, kind))


# --------------------------------------------------------------------------- probe
def probe_cmd(
    relation: Annotated[str, typer.Argument(help="Zoo facts relation whose prompts are probed (e.g. capital).")] = "capital",
    label: Annotated[str, typer.Option("--label", help="Label to decode from meta (continent).")] = "continent",
    n: Annotated[int, typer.Option("--n", min=10)] = 600,
    cv: Annotated[int, typer.Option("--cv", min=2)] = 5,
    model: _Model = None, device: _Device = None, json_out: _Json = None,
) -> None:
    """Linear probes per layer on zoo facts (last subject token), with a control task (Hewitt & Liang)."""
    from ..internals._zoo import facts
    from ..internals.probing import probe
    from ..internals.tracing import subject_positions

    out, err = _prepare(json_out)
    m = _load(model, device)
    items = [f for f in facts(n=None, relation=relation) if f.get(label) is not None][:n]
    if len(items) < 2 * cv:
        raise InputError(f"only {len(items)} zoo facts of relation {relation!r} carry a {label!r}")
    pos = [max(subject_positions(m, f["prompt"], f["subject"])) for f in items]
    r = probe(m, [f["prompt"] for f in items], [f[label] for f in items], position=pos,
              control_keys=[f["subject_text"] or f["prompt"] for f in items], cv=cv, progress=True)
    if str(json_out) != "-":
        out.print(r.table(), markup=False, highlight=False)
    _write(r, json_out, None, None, err)


def register(app: typer.Typer) -> None:
    """Add ``lens``, ``lens-train``, ``trace``, ``heads`` and ``probe`` to the main app."""
    app.command("lens")(lens)
    app.command("lens-train")(lens_train)
    app.command("trace")(trace)
    app.command("heads")(heads)
    app.command("probe")(probe_cmd)
