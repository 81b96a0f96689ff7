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
from ._common import DeviceOpt, ModelOpt, PngOpt, ResultJsonOpt, resumable
from .jobs import RayAddressOpt, RayOpt, WorkersOpt, job_executor

__all__ = ["register"]

_Model = ModelOpt
_Device = DeviceOpt
_Json = ResultJsonOpt
_Html = Annotated[Path | None, typer.Option("--html", metavar="FILE", dir_okay=False,
                                              help="Write a self-contained HTML report.")]
_Png = PngOpt


EMBEDDED = "lmxray-tiny"


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _prepare(*paths: Path | None) -> tuple[Any, Any]:
    from ._common import check_outputs, consoles

    check_outputs(*paths)
    return consoles()


def _write(result: Any, json_out: Path | None, html_out: Path | None, png_out: Path | None, err: Any,
           **png_kw: Any) -> None:
    """Render every output first, then write them all (atomically)."""
    from ._common import render_png, write_outputs

    write_outputs([(json_out, lambda: result.to_json() + "\n"), (html_out, lambda: result.to_html()),
                   (png_out, lambda: render_png(lambda buf: buf.write(result.to_png(**png_kw))))], err)


def _load(model: str | None, device: str | None) -> Any:
    from ._common import load_model

    return load_model(model, device)


# --------------------------------------------------------------------------- zoo data
def zoo_examples(task: str, split: str = "test", n: int | None = 100, seed: int = 0) -> list[Any]:
    """Examples of a zoo task (``lmxray.zoo.generate``: prompt, target, character spans, meta)."""
    from .. import zoo

    return list(zoo.generate(task, split, n, seed))


def zoo_facts(n: int | None = 100, relation: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The zoo's facts as records (:func:`lmxray.internals.fact_records` of :func:`zoo_examples`)."""
    from ..internals import fact_records

    return fact_records(zoo_examples("facts", "test", None if relation else n, seed), n=n, relation=relation)


def zoo_texts(tasks: list[str] | None, n: int, split: str) -> list[str]:
    """Text to train a tuned lens on: the zoo corpus (mixed tasks), or the given tasks' examples."""
    from .. import zoo
    from ..internals.data import example_texts

    if not tasks:
        return list(zoo.corpus(split, n=n, seed=0))
    return [t for task in tasks for t in example_texts(zoo_examples(task, split, n))]


# --------------------------------------------------------------------------- lens
def lens(
    prompt: Annotated[str, typer.Argument(help="The prompt to read layer by layer.", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", "-t", metavar="TEXT",
                                                  help="Token to track, one token (default: each position's final top-1).")] = None,
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
    if not prompt.strip():
        raise InputError("the prompt is empty; give the text to read layer by layer")
    tl = TunedLens.load(tuned) if tuned is not None else None
    m = _load(model, device)
    r = logit_lens(m, prompt, target, top_k=top_k, lens=tl)
    if not -len(r.tokens) <= position < len(r.tokens):
        raise InputError(f"--position {position} is outside the prompt's {len(r.tokens)} tokens "
                         f"(use {-len(r.tokens)}..{len(r.tokens) - 1})")
    if str(json_out) != "-":
        r.show(out, position=position)
    _write(r, json_out, html_out, png_out, err)


def lens_train(
    out_file: Annotated[Path, typer.Argument(metavar="OUT", dir_okay=False, help="Where to write the lens (.safetensors).")],
    corpus: Annotated[Path | None, typer.Option("--corpus", metavar="FILE", exists=False,
                                                   help="Training text, one example per line.")] = None,
    zoo: Annotated[str, typer.Option("--zoo", metavar="TASKS",
                                     help="Zoo tasks to take text from (comma list) (default: the zoo corpus).")] = "",
    n: Annotated[int, typer.Option("--n", min=1, help="Zoo texts (per task with --zoo).")] = 2000,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 250,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="SGD learning rate (linear decay).")] = 0.3,
    held_out: Annotated[float, typer.Option("--held-out", min=0.05, max=0.9, help="Fraction kept for evaluation.")] = 0.2,
    model: _Model = None, device: _Device = None, json_out: _Json = None,
) -> None:
    """Train a tuned lens; print held-out KL(final ‖ lens) per layer for the logit and tuned lens."""
    from ..internals.lens import TunedLens, lens_kl
    from ..io import dumps
    from ..render.internals import matrix_table
    from ._common import write_outputs

    out, err = _prepare(out_file, json_out)
    train, test, source = _lens_texts(corpus, zoo, n, held_out)
    m = _load(model, device)
    tl = TunedLens.fit(m, train, steps=steps, batch_size=batch_size, lr=lr)
    tl.info["corpus"] = source
    kl_logit, kl_tuned = lens_kl(m, test), lens_kl(m, test, tl)
    tl.info.update(heldout_kl_logit=kl_logit.tolist(), heldout_kl_tuned=kl_tuned.tolist())
    labels = ["embed"] + [str(i) for i in range(m.n_layers)]
    if str(json_out) != "-":
        out.print(matrix_table(f"held-out KL(final ‖ lens), nats ({len(test)} texts)",
                               [kl_logit, kl_tuned], ["logit lens", "tuned lens"], labels, fmt="{:.4f}"))
    report = dumps({"format": "lmxray.lens-train/1", "model": m.name, "layers": labels,
                    "kl_logit": kl_logit, "kl_tuned": kl_tuned, "info": tl.info}) + "\n"
    tl.save(out_file)
    err.print(f"wrote {out_file}", style="dim", highlight=False, markup=False)
    write_outputs([(json_out, lambda: report)], err)


def _lens_texts(corpus: Path | None, zoo: str, n: int, held_out: float) -> tuple[list[str], list[str], str]:
    """``(train, held-out, source)`` texts from ``--corpus`` (UTF-8, one per line) or the zoo."""
    import numpy as np

    from ..io import read_text

    if corpus is not None:
        if zoo:
            raise InputError("give --corpus or --zoo, not both")
        lines = [ln.strip() for ln in read_text(corpus, what="corpus").splitlines() if ln.strip()]
        if len(lines) < 10:
            raise InputError(f"only {len(lines)} training texts in {corpus}; give at least 10 (one per line)")
        order = np.random.default_rng(0).permutation(len(lines))
        k = max(1, int(len(lines) * held_out))
        return [lines[i] for i in order[k:]], [lines[i] for i in order[:k]], str(corpus)
    # the zoo's train split to fit, its held-out test split to evaluate
    tasks = _split(zoo) or None
    train = zoo_texts(tasks, n, "train")
    seen = set(train)
    test = [t for t in zoo_texts(tasks, max(20, int(n * held_out)), "test") if t not in seen]
    if not test:
        raise InputError("the zoo gave no held-out text; pass --corpus")
    return train, test, f"zoo:{zoo or 'corpus'}"


# --------------------------------------------------------------------------- trace
def trace(
    prompt: Annotated[str | None, typer.Argument(help="The clean prompt.", show_default=False)] = None,
    corrupt: Annotated[str | None, typer.Option("--corrupt", metavar="TEXT",
                                                   help="Corrupted prompt (same token count): activation patching.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", metavar="TEXT",
                                                   help="Subject substring to noise: ROME causal tracing.")] = None,
    answer: Annotated[str | None, typer.Option("--answer", metavar="TEXT", help="Answer token (default: clean top-1).")] = None,
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
    png_out: _Png = None, ray: RayOpt = False, ray_address: RayAddressOpt = None, workers: WorkersOpt = None,
) -> None:
    """Activation patching (--corrupt), causal tracing (--subject) or a facts average (--zoo-facts)."""
    modes = sum(x is not None for x in (corrupt, subject, zoo_facts))
    if modes != 1:
        raise InputError("give exactly one of --corrupt (patching), --subject (causal tracing) or --zoo-facts N")
    if zoo_facts is None and prompt is None:
        raise InputError("missing PROMPT (the clean prompt)")
    if zoo_facts is not None and prompt is not None:
        raise InputError("--zoo-facts traces the zoo's fact prompts; drop the PROMPT argument")
    if checkpoint is not None and zoo_facts is None:
        raise InputError("--checkpoint applies to --zoo-facts runs only; drop it")
    if (ray or ray_address is not None or workers is not None) and zoo_facts is None:
        raise InputError("--ray, --ray-address and --workers apply to --zoo-facts runs only; drop them")
    if corrupt is None and (attribution or foil is not None):
        raise InputError("--attribution and --foil apply to activation patching (--corrupt) only")
    if prompt is not None and not prompt.strip():
        raise InputError("the prompt is empty; give the clean prompt")
    out, err = _prepare(json_out, html_out, png_out, checkpoint)
    m = _load(model, device)
    if zoo_facts is not None:
        with job_executor(model, device, ray, ray_address, workers) as ex:
            r: Any = _trace_zoo_facts(m, zoo_facts, window, samples, noise, checkpoint, ex)
    elif subject is not None:
        from ..internals.tracing import causal_trace

        r = causal_trace(m, str(prompt), subject, answer, window=window, n_samples=samples, noise=noise, progress=True)
    else:
        r = _patch(m, prompt, corrupt, answer, foil, sites, positions, metric, attribution)
    if str(json_out) != "-":
        r.show(out)
        if "attribution_pearson_r" in r.info:
            out.print("attribution patching vs exact, Pearson r: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in r.info["attribution_pearson_r"].items()),
                      markup=False, soft_wrap=True)
    _write(r, json_out, html_out, png_out, err)


def _trace_zoo_facts(m: Any, n: int, window: int, samples: int, noise: float, checkpoint: Path | None,
                     executor: Any = None) -> Any:
    """ROME's averaged table over ``n`` zoo facts; Ctrl-C with a checkpoint says how to resume."""
    from ..internals.tracing import trace_facts

    facts = zoo_facts(n=n)
    if len(facts) < n:
        raise InputError(f"the zoo has {len(facts)} facts; use --zoo-facts {len(facts)} or less")
    with resumable(checkpoint is not None, f"checkpoint {checkpoint}"):
        return trace_facts(m, facts, window=window, n_samples=samples, noise=noise, checkpoint=checkpoint,
                           executor=executor)




def _patch(m: Any, prompt: Any, corrupt: Any, answer: Any, foil: Any, sites: str, positions: str, metric: str,
           attribution: bool) -> Any:
    from ..internals.patching import activation_patching, attribution_patching, compare

    kinds = _split(sites)
    r = activation_patching(m, prompt, corrupt, answer, foil, sites=kinds, positions=positions, metric=metric,
                            progress=True)
    if attribution:
        ap = attribution_patching(m, prompt, corrupt, answer, foil, sites=kinds, positions=positions, metric=metric)
        r.info["attribution_pearson_r"] = compare(r, ap)
    return r


# --------------------------------------------------------------------------- heads
def heads(
    ctx: typer.Context,
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts (default: the zoo induction task for the embedded model, else repeated random tokens).", show_default=False)] = None,
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
    """Previous-token, duplicate-token and induction scores of every head (and ablation).

    Without prompts, the embedded model is scored on the zoo's induction task (--n examples),
    where its circuit shows; other models, or --n-seqs / --seq-len, use repeated random tokens.
    """
    from ..internals.heads import SCORE_KINDS, head_scores

    if kind not in SCORE_KINDS:
        raise InputError(f"--kind must be one of {', '.join(SCORE_KINDS)}")
    out, err = _prepare(json_out, html_out, png_out)
    m = _load(model, device)
    if prompts:
        r = head_scores(m, prompts)
    elif m.name == EMBEDDED and not _given(ctx, "n_seqs", "seq_len"):
        r = head_scores(m, _induction_texts(m, n), data="the zoo induction task, test split")
    else:
        r = head_scores(m, None, n_seqs=n_seqs, seq_len=seq_len)
    if ablate_zoo is not None:
        r.info["ablation"] = _ablate(m, r, ablate_zoo, n, top)
    if str(json_out) != "-":
        r.show(out, top=top)
        if ablate_zoo is not None:
            out.print(_ablation_line(ablate_zoo, r.info["ablation"]), markup=False, highlight=False, soft_wrap=True)
    _write(r, json_out, html_out, png_out, err, kind=kind)


def _given(ctx: typer.Context, *names: str) -> bool:
    """Whether any of these options was given on the command line."""
    sources = [ctx.get_parameter_source(name) for name in names]
    # by name: typer may vendor its own click, with its own ParameterSource enum
    return any(src is not None and getattr(src, "name", "") != "DEFAULT" for src in sources)


def _induction_texts(m: Any, n: int) -> list[str]:
    """Full texts of ``n`` zoo induction examples that fit the model's context."""
    from ..internals.data import example_texts

    limit = m.max_length or 10**9
    return [t for t in example_texts(zoo_examples("induction", "test", n)) if len(m.encode(t)) <= limit]


def _ablate(m: Any, r: Any, task: str, n: int, top: int) -> dict[str, Any]:
    from ..internals.data import prompts_and_targets
    from ..internals.heads import ablate_heads, random_heads_control

    ps, ts = prompts_and_targets(zoo_examples(task, "test", n))
    chosen = [h for h, _ in r.top("induction", top)]
    res = ablate_heads(m, chosen, ps, ts)
    ctrl = random_heads_control(m, len(chosen), ps, ts, exclude=chosen)
    return {"task": task, "heads": chosen, **res, "random": [dict(c) for c in ctrl]}


def _ablation_line(task: str, a: dict[str, Any]) -> str:
    rnd = [c["accuracy"] for c in a["random"]]
    rlp = [c["logprob"] for c in a["random"]]
    return (f"{task}: accuracy {a['base_accuracy']:.3f} → {a['accuracy']:.3f}, target log-prob "
            f"{a['base_logprob']:.3f} → {a['logprob']:.3f} ablating the top {len(a['heads'])} induction "
            f"heads; {len(rnd)} random sets of as many heads: accuracy mean {sum(rnd) / len(rnd):.3f} "
            f"(min {min(rnd):.3f}), log-prob mean {sum(rlp) / len(rlp):.3f}")


# --------------------------------------------------------------------------- probe
def probe_cmd(
    ctx: typer.Context,
    relation: Annotated[str, typer.Argument(help="Zoo facts relation whose prompts are probed (e.g. capital).")] = "capital",
    label: Annotated[str, typer.Option("--label", help="Label to decode from meta (continent).")] = "continent",
    n: Annotated[int, typer.Option("--n", min=10, help="Facts to probe (by default at most 600: all the relation has).")] = 600,
    cv: Annotated[int, typer.Option("--cv", min=2)] = 5,
    model: _Model = None, device: _Device = None, json_out: _Json = None,
) -> None:
    """Linear probes per layer on zoo facts (last subject token), with a control task (Hewitt & Liang)."""
    from ..internals.probing import probe
    from ..internals.tracing import subject_positions

    out, err = _prepare(json_out)
    if not relation.strip():
        raise InputError("the relation is empty; give a zoo facts relation such as 'capital'")
    facts = zoo_facts(n=None, relation=relation)
    items = [f for f in facts if f.get(label) is not None]
    if not facts:
        known = sorted({f["relation"] for f in zoo_facts(n=None) if f["relation"]})
        raise InputError(f"the zoo has no facts of relation {relation!r}; use one of {', '.join(known)}")
    if not items:
        raise InputError(f"no facts of relation {relation!r} carry a {label!r} label; use --label continent")
    wanted = n if _given(ctx, "n") else min(n, len(items))
    if len(items) < max(wanted, 2 * cv):
        need = f"use --n {len(items)} or less" if len(items) >= 2 * cv else f"--cv {cv} needs {2 * cv}"
        raise InputError(f"the zoo has {len(items)} facts of relation {relation!r} that carry a {label!r}; {need}")
    items = items[:n]
    m = _load(model, device)
    pos = [max(subject_positions(m, f["prompt"], f["subject"])) for f in items]
    r = probe(m, [f["prompt"] for f in items], [f[label] for f in items], position=pos,
              control_keys=[f["subject_text"] or f["prompt"] for f in items], cv=cv, progress=True)
    if str(json_out) != "-":
        r.show(out)
    _write(r, json_out, None, None, err)


def register(app: typer.Typer) -> None:
    """Add ``lens``, ``lens-train``, ``trace``, ``heads`` and ``probe`` to the main app."""
    app.command("lens")(lens)
    app.command("lens-train")(lens_train)
    app.command("trace")(trace)
    app.command("heads")(heads)
    app.command("probe")(probe_cmd)
