"""CLI commands that use explanations to improve models: ``shortcuts``, ``finetune``, ``steer``,
``edit``, ``amplify``.

Mounted on the main Typer app by :func:`register`. Every command follows the shared shape:
positional input (a JSONL dataset or a prompt; the zoo task when omitted), ``--model`` (default:
the embedded model), ``--json``/``--png`` outputs checked first and written atomically only
after the computation succeeded, and bad input raised as an ``LmxrayError`` (one line on stderr,
exit code 2). Commands parse options, call :mod:`lmxray.improve` and print tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ..io import atomic_folder, read_jsonl
from ._common import (
    DeviceOpt,
    ModelOpt,
    ResultJsonOpt,
    check_method,
    check_outputs,
    consoles,
    load_model,
    resumable,
    write_outputs,
)

__all__ = ["register"]

_Model = ModelOpt
_Device = DeviceOpt
_Json = ResultJsonOpt
_Png = Annotated[
    Path | None, typer.Option("--png", metavar="FILE", dir_okay=False, help="Write a PNG plot.")
]
_Seed = Annotated[
    int, typer.Option("--seed", help="Seed of the zoo data (and of random controls).")
]


def _data_arg(help: str) -> Any:
    """The optional ``[DATA.jsonl]`` argument (without it, the command runs the zoo demo)."""
    return typer.Argument(metavar="[DATA.jsonl]", dir_okay=False, show_default=False, help=help)


_NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]


def _check_out_dir(out_dir: Path | None) -> None:
    """``--out DIR`` is checked before any work: not a file, its parent folder exists."""
    if out_dir is None:
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder")
    if not (out_dir.parent if str(out_dir.parent) else Path(".")).is_dir():
        raise InputError(
            f"cannot write {out_dir}: folder {out_dir.parent} does not exist; create it first"
        )


def _data_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL dataset (one-line errors naming the line: not UTF-8, not JSON...)."""
    return read_jsonl(path, what="JSONL dataset",
                      hint="; give a JSONL file with one example (prompt, target) per line")


def _prepare(*paths: Path | None) -> tuple[Any, Any]:
    check_outputs(*paths)
    return consoles()


def _load(model: str | None, device: str | None) -> Any:
    return load_model(model, device)


def _emit(
    result: Any,
    out: Any,
    err: Any,
    json_out: Path | None,
    png_out: Path | None,
    png_kw: dict[str, Any] | None = None,
    table: str | None = None,
) -> None:
    """Print the table (unless JSON goes to stdout), then write the outputs atomically."""
    if str(json_out) != "-":
        out.print(
            table if table is not None else result.table(),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    outputs: list[tuple[Path | None, Any]] = [(json_out, lambda: result.to_json() + "\n")]
    if png_out is not None:
        outputs.append((png_out, lambda: result.to_png(**(png_kw or {}))))
    write_outputs(outputs, err)


def _floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name} must be a comma list of numbers, got {text!r}") from None
    if not vals:
        raise InputError(f"{name} is empty; give a comma list of numbers")
    return vals


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name} must be a comma list of integers, got {text!r}") from None


# --------------------------------------------------------------------------- shortcuts
def shortcuts(
    data: Annotated[
        Path | None, _data_arg("Labelled JSONL: prompt, target (or label), optional rationale.")
    ] = None,
    task: Annotated[
        str, typer.Option("--task", help="Zoo task used when no DATA is given.")
    ] = "sentiment",
    split: Annotated[str, typer.Option("--split", help="Zoo split.")] = "train",
    n: Annotated[int, typer.Option("--n", min=2, help="Zoo examples.")] = 1000,
    method: Annotated[
        str, typer.Option("--method", metavar="NAME", help="Attribution method.")
    ] = "input_x_gradient",
    min_count: Annotated[
        int, typer.Option("--min-count", min=1, help="Candidates occur in at least N examples.")
    ] = 5,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows printed.")] = 10,
    seed: _Seed = 0,
    model: _Model = None,
    device: _Device = None,
    json_out: _Json = None,
    png_out: _Png = None,
    no_progress: _NoProgress = False,
) -> None:
    """Rank tokens that get attribution, are not rationales and predict the label (shortcuts)."""
    from ..improve.experiments import shortcut_demo
    from ..improve.shortcuts import detect_shortcuts

    out, err = _prepare(json_out, png_out)
    check_method(method)
    rows = _data_rows(data) if data is not None else None
    if rows is None and task != "sentiment":
        raise InputError(
            "the zoo shortcut demo uses --task sentiment (the task with a planted shortcut); "
            "pass a JSONL file for other data"
        )
    m = _load(model, device)
    if rows is not None:
        rep = detect_shortcuts(
            m, rows, method=method, min_count=min_count, progress=not no_progress
        )
    else:
        rep = shortcut_demo(m, n=n, split=split, seed=seed, method=method,
                            min_count=min_count, progress=not no_progress)
    _emit(rep, out, err, json_out, png_out, png_kw={"k": top}, table=rep.table(k=top))
    if rows is None and str(json_out) != "-":
        out.print(
            f"planted shortcut {rep.info['planted']}: rank {rep.info['planted_rank']}", markup=False
        )


# --------------------------------------------------------------------------- finetune
def finetune_cmd(
    data: Annotated[
        Path | None, _data_arg("Training JSONL: prompt, target (or label), optional irrelevant.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            file_okay=False,
            help="Save the fine-tuned model(s) here (HF format); resumes.",
        ),
    ] = None,
    penalise: Annotated[
        str,
        typer.Option(
            "--penalise",
            metavar="WHAT",
            help="'shortcut' (zoo annotation), 'detect', 'none', or comma words.",
        ),
    ] = "shortcut",
    lam: Annotated[float, typer.Option("--lam", min=0.0, help="RRR penalty weight.")] = 30.0,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 200,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 3e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    ig_samples: Annotated[
        int, typer.Option("--ig-samples", min=1, help="IG path points per example and step.")
    ] = 4,
    attribution: Annotated[
        str, typer.Option("--attribution", help="Penalised attribution: gradient (Ross), occlusion or ig.")
    ] = "gradient",
    n_train: Annotated[
        int, typer.Option("--n-train", min=10, help="Zoo training examples.")
    ] = 2000,
    n_eval: Annotated[
        int, typer.Option("--n-eval", min=10, help="Zoo test and shift examples.")
    ] = 300,
    compare: Annotated[
        bool, typer.Option("--compare/--no-compare", help="Zoo demo: also a plain fine-tune.")
    ] = True,
    annotation: Annotated[
        str,
        typer.Option(
            "--annotation",
            help="Zoo demo training labels: zoo (the zoo's biased annotation), decoy (gold "
            "labels, the marker only on its label) or relabel (every marked review gets the "
            "marker's label).",
        ),
    ] = "zoo",
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Resume from checkpoints in --out.")
    ] = True,
    seed: _Seed = 0,
    model: _Model = None,
    device: _Device = None,
    json_out: _Json = None,
    no_progress: _NoProgress = False,
) -> None:
    """Fine-tune with a right-for-the-right-reasons penalty on input gradients of marked tokens."""
    from ..improve.experiments import rrr_demo
    from ..improve.regularise import FinetuneConfig

    out, err = _prepare(json_out)
    _check_out_dir(out_dir)
    cfg = FinetuneConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                         ig_samples=ig_samples, attribution=attribution)
    if data is not None:
        _finetune_file(data, out_dir, penalise, lam, cfg, resume, model, device, json_out,
                       no_progress, out, err)
        return
    m = _load(model, device)
    pen: Any = penalise
    if penalise == "none":
        raise InputError(
            "--penalise none is a plain fine-tune; the zoo demo already runs one with --compare"
        )
    with resumable(resume and out_dir is not None, note=f"checkpoints in {out_dir}"):
        report, _ = rrr_demo(m, penalise=pen, lam=lam, config=cfg, n_train=n_train,
                             n_eval=n_eval, annotation=annotation, compare=compare,
                             out_dir=out_dir, resume=resume, seed=seed, progress=not no_progress)
    _emit(report, out, err, json_out, None)


def _finetune_file(
    data: Path,
    out_dir: Path | None,
    penalise: str,
    lam: float,
    cfg: Any,
    resume: bool,
    model: str | None,
    device: str | None,
    json_out: Path | None,
    no_progress: bool,
    out: Any,
    err: Any,
) -> None:
    """``lmxray finetune DATA.jsonl --out DIR``: fine-tune on the file's examples."""
    from ..improve.regularise import finetune
    rows = _data_rows(data)
    if out_dir is None:
        raise InputError("fine-tuning a JSONL dataset needs --out DIR to save the model")
    if penalise == "detect":
        raise InputError(
            "--penalise detect works on the zoo task; run 'lmxray shortcuts DATA' and pass the words"
        )
    words = (
        None
        if penalise in ("shortcut", "none", "")
        else [w.strip() for w in penalise.split(",") if w.strip()]
    )
    m = _load(model, device)
    with resumable(resume, note=f"checkpoint in {out_dir / 'checkpoint'}"):
        r = finetune(m, rows, lam=0.0 if penalise == "none" else lam, config=cfg,
                     irrelevant=words, out_dir=out_dir, resume=resume, progress=not no_progress)
    last = r.history[-1] if r.history else {}
    if str(json_out) != "-":
        out.print(
            f"fine-tuned {r.n_examples} examples ({r.n_marked} with marked tokens), "
            f"{cfg.steps} steps, lambda {r.config.lam:g}: last CE "
            f"{last.get('ce', float('nan')):.4f}, penalty "
            f"{last.get('penalty', float('nan')):.4g}; saved to {r.path}",
            markup=False,
            soft_wrap=True,
        )
    write_outputs([(json_out, lambda: r.to_json() + "\n")], err)


# --------------------------------------------------------------------------- steer
def steer_cmd(
    prompt: Annotated[
        str | None,
        typer.Argument(help="Also generate from this prompt, steered and not.", show_default=False),
    ] = None,
    to: Annotated[
        str, typer.Option("--to", help="Steer towards: positive or negative.")
    ] = "positive",
    layers: Annotated[
        str | None, typer.Option("--layers", metavar="L,..", help="Layers [default: all].")
    ] = None,
    coefs: Annotated[
        str, typer.Option("--coefs", metavar="C,..", help="Coefficients.")
    ] = "0,1,2,4,8",
    site: Annotated[str, typer.Option("--site", help="resid_pre or resid_post.")] = "resid_pre",
    project: Annotated[
        bool, typer.Option("--project", help="Project out the mean-activation direction.")
    ] = False,
    n_vector: Annotated[
        int, typer.Option("--n-vector", min=4, help="Training reviews for the vector.")
    ] = 200,
    n_eval: Annotated[int, typer.Option("--n-eval", min=4, help="Test reviews to flip.")] = 200,
    n_fluency: Annotated[
        int, typer.Option("--n-fluency", min=1, help="Held-out zoo texts for the LM loss.")
    ] = 200,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 3,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            metavar="FILE",
            dir_okay=False,
            help="Save the vector of the best layer (.safetensors).",
        ),
    ] = None,
    seed: _Seed = 0,
    model: _Model = None,
    device: _Device = None,
    json_out: _Json = None,
    png_out: _Png = None,
    no_progress: _NoProgress = False,
) -> None:
    """Contrastive activation addition on zoo sentiment: flips per layer and coefficient, and fluency."""
    import numpy as np

    from ..improve.experiments import sentiment_vector, steering_demo
    from ..improve.steering import check_layers, steer

    if prompt is not None and not prompt.strip():
        raise InputError("the PROMPT is empty; give text to generate from, or leave it out")
    out, err = _prepare(json_out, png_out, save)
    coef_list = _floats(coefs, "--coefs")
    m = _load(model, device)
    layer_list = check_layers(m, _ints(layers, "--layers"))
    sw = steering_demo(m, to=to, layers=layer_list, coefs=coef_list, n_vector=n_vector,
                       n_eval=n_eval, n_fluency=n_fluency, site=site, project=project,
                       seed=seed, progress=not no_progress)
    best_i, best_j = np.unravel_index(int(np.argmax(sw.flip)), sw.flip.shape)
    best_layer, best_coef = sw.layers[int(best_i)], sw.coefs[int(best_j)]
    vec = None
    if prompt is not None or save is not None:
        vec = sentiment_vector(m, to, best_layer, n_vector=n_vector, seed=seed, site=site,
                               project=project)
    _emit(sw, out, err, json_out, png_out)
    if prompt is not None and vec is not None and str(json_out) != "-":
        plain = m.generate(prompt, max_new_tokens)
        with steer(m, vec, best_coef):
            steered = m.generate(prompt, max_new_tokens)
        out.print(f"unsteered: {prompt}[{plain}]", markup=False, highlight=False, soft_wrap=True)
        out.print(
            f"steered (layer {best_layer}, coef {best_coef:g}): {prompt}[{steered}]",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if save is not None and vec is not None:
        vec.save(save)
        err.print(f"wrote {save}", style="dim", highlight=False, markup=False)


# --------------------------------------------------------------------------- edit
_EditMethod = Annotated[str, typer.Option("--method", metavar="NAME",
                                          help="rome (one edit at a time) or memit (all at once).")]


def edit_cmd(
    prompt: Annotated[str | None, typer.Argument(
        help="Fact prompt to edit (or use --facts N or --batch FILE).", show_default=False)] = None,
    subject: Annotated[str | None, typer.Option(
        "--subject", metavar="TEXT", help="Subject substring of PROMPT.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", "-t", metavar="TEXT", help="New object (' Rome').")] = None,
    layer: Annotated[int | None, typer.Option(
        "--layer", min=0, help="Edit layer (MEMIT: the first) [default: causal tracing].")] = None,
    facts_n: Annotated[int | None, typer.Option(
        "--facts", metavar="N", min=1,
        help="Benchmark N edits on zoo facts (rome: one at a time vs a random layer; "
             "memit: all at once).")] = None,
    batch: Annotated[Path | None, typer.Option(
        "--batch", metavar="FILE", dir_okay=False,
        help="JSONL of edits (prompt, subject, target) made at once (MEMIT).")] = None,
    method: _EditMethod = "rome",
    n_specificity: Annotated[int | None, typer.Option(
        "--n-specificity", min=1, help="Other facts checked [default: rome 20, memit 200].")] = None,
    preserve_weight: Annotated[float | None, typer.Option(
        "--preserve-weight", metavar="MU",
        help="MEMIT: weight of the keys of the zoo's other subjects, held in place (0: plain "
             "MEMIT) [default: 10].")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR", file_okay=False, help="Save the edited model (HF format).")] = None,
    seed: _Seed = 0,
    model: _Model = None,
    device: _Device = None,
    json_out: _Json = None,
    no_progress: _NoProgress = False,
) -> None:
    """Locate-then-edit: ROME rank-one edits or MEMIT batches at the layers causal tracing
    selects (one fact, a JSONL batch, or an N-edit benchmark)."""
    if method not in ("rome", "memit"):
        raise InputError(f"--method must be rome or memit, got {method!r}")
    if sum(x is not None for x in (prompt, facts_n, batch)) != 1:
        raise InputError("give a PROMPT with --subject and --target, or --facts N (the "
                         "benchmark), or --batch FILE.jsonl (with --method memit); only one")
    if batch is not None and method != "memit":
        raise InputError("--batch edits many facts at once: use it with --method memit")
    mkw = _memit_options(method, preserve_weight)
    out, err = _prepare(json_out)
    if facts_n is not None:
        _edit_benchmark(method, facts_n, layer, n_specificity, seed, model, device, json_out,
                        no_progress, out, err, mkw)
        return
    _check_out_dir(out_dir)
    if batch is not None:
        _edit_batch(batch, layer, out_dir, seed, model, device, json_out, out, err, mkw)
        return
    _edit_one(prompt, subject, target, layer, out_dir, method, seed, model, device,  # type: ignore[arg-type]
              json_out, out, err, mkw)


def _memit_options(method: str, preserve_weight: float | None) -> dict[str, Any]:
    """``memit_edit`` keyword arguments from the MEMIT-only options, checked."""
    if preserve_weight is None:
        return {}
    if method != "memit":
        raise InputError("--preserve-weight is a MEMIT setting: use it with --method memit")
    if not (math.isfinite(preserve_weight) and preserve_weight >= 0):
        raise InputError(f"--preserve-weight must be a number >= 0 (0: plain MEMIT), got "
                         f"{preserve_weight}")
    return {"preserve_weight": preserve_weight}


def _edit_benchmark(method: str, n: int, layer: int | None, n_spec: int | None, seed: int,
                    model: str | None, device: str | None, json_out: Path | None,
                    no_progress: bool, out: Any, err: Any, mkw: dict[str, Any]) -> None:
    """``lmxray edit --facts N``: the ROME (single edits) or MEMIT (one batch) benchmark."""
    from ..improve.experiments import editing_demo
    from ..improve.memit import evaluate_memit
    from .internals import zoo_facts

    m = _load(model, device)
    if layer is not None and layer >= m.n_layers:
        raise InputError(f"--layer {layer} is out of range; the model has {m.n_layers} layers")
    if method == "memit":
        rep = evaluate_memit(m, zoo_facts(n=None), n_edits=n, layer=layer,
                             n_specificity=n_spec or 200, seed=seed, progress=not no_progress,
                             **mkw)
    else:
        rep = editing_demo(m, n_edits=n, layer=layer, n_specificity=n_spec or 20, seed=seed,
                           progress=not no_progress)
    _emit(rep, out, err, json_out, None)


def _save_model(edited: Any, out_dir: Path | None, err: Any) -> None:
    if out_dir is not None:
        with atomic_folder(out_dir) as tmp:
            edited.hf.save_pretrained(str(tmp))
            edited.tokenizer.save_pretrained(str(tmp))
        err.print(f"wrote {out_dir}", style="dim", highlight=False, markup=False)


def _edit_one(prompt: str, subject: str | None, target: str | None, layer: int | None,
              out_dir: Path | None, method: str, seed: int, model: str | None,
              device: str | None, json_out: Path | None, out: Any, err: Any,
              mkw: dict[str, Any]) -> None:
    """``lmxray edit PROMPT --subject S --target T``: one ROME edit (or a MEMIT batch of one)."""
    from ..improve.experiments import edit_prompt

    for bad, msg in (
        (not prompt.strip(), "the PROMPT is empty; give a fact prompt to edit"),
        (not subject or not target or not target.strip(),
         "editing a PROMPT needs --subject (a substring of it) and --target (the new object)"),
        (bool(subject) and subject not in prompt, f"--subject {subject!r} does not occur in the prompt"),
    ):
        if bad:
            raise InputError(msg)
    m = _load(model, device)
    if layer is not None and not 0 <= layer < m.n_layers:
        raise InputError(f"--layer {layer} is out of range; the model has {m.n_layers} layers")
    if method == "memit":
        _run_memit(m, [{"prompt": prompt, "subject": subject, "target": target}], layer,
                   out_dir, seed, json_out, out, err, mkw)
        return
    res, edited = edit_prompt(m, prompt, subject, target, layer=layer, seed=seed)
    _save_model(edited, out_dir, err)
    _emit(res, out, err, json_out, None)


def _edit_batch(batch: Path, layer: int | None, out_dir: Path | None, seed: int,
                model: str | None, device: str | None, json_out: Path | None, out: Any,
                err: Any, mkw: dict[str, Any]) -> None:
    """``lmxray edit --method memit --batch FILE.jsonl``: all the file's edits at once."""
    from ..improve.memit import EditRequest

    rows = read_jsonl(batch, what="edit batch",
                      hint="; give a JSONL file with one edit (prompt, subject, target) per line")
    for k, r in enumerate(rows, 1):
        try:
            EditRequest.of(r)
        except InputError as e:
            raise InputError(f"{batch} line {k}: {e}") from None
    m = _load(model, device)
    if layer is not None and not 0 <= layer < m.n_layers:
        raise InputError(f"--layer {layer} is out of range; the model has {m.n_layers} layers")
    _run_memit(m, rows, layer, out_dir, seed, json_out, out, err, mkw)


def _run_memit(m: Any, rows: list[dict[str, Any]], layer: int | None, out_dir: Path | None,
               seed: int, json_out: Path | None, out: Any, err: Any,
               mkw: dict[str, Any]) -> None:
    """One MEMIT batch; the zoo facts' subjects (other than the requests') are preserved."""
    from ..improve.editing import context_prefixes
    from ..improve.experiments import zoo_edit_layer
    from ..improve.memit import COV_TEXTS, batch_result, default_layers, memit_edit
    from ..zoo import corpus
    from .internals import zoo_facts

    located = layer if layer is not None else zoo_edit_layer(m, seed=seed)
    texts = corpus("train", COV_TEXTS, seed=seed)
    subjects = sorted({str(f["subject_text"]) for f in zoo_facts(n=None)})
    ed = memit_edit(m, rows, layers=default_layers(m.n_layers, located), cov_texts=texts,
                    prefixes=context_prefixes(texts, 2, seed=seed), preserve_subjects=subjects,
                    **mkw)
    edited = ed.apply(m)
    res = batch_result(m, edited, ed)
    _save_model(edited, out_dir, err)
    _emit(res, out, err, json_out, None)


# --------------------------------------------------------------------------- amplify
def amplify_cmd(
    split: Annotated[
        str, typer.Argument(help="Zoo sentiment split for pool and queries.")
    ] = "shift",
    proxy: Annotated[
        str | None,
        typer.Option(
            "--proxy",
            metavar="ID_OR_PATH",
            help="Model that explains the demonstrations [default: --model].",
        ),
    ] = None,
    shots: Annotated[int, typer.Option("--shots", min=1, help="Demonstrations.")] = 4,
    k: Annotated[int, typer.Option("--k", min=1, help="Rationale words per demonstration.")] = 3,
    n_pool: Annotated[int, typer.Option("--n-pool", min=2)] = 200,
    n_queries: Annotated[int, typer.Option("--n-queries", min=1)] = 200,
    method: Annotated[
        str | None, typer.Option("--method", metavar="NAME", help="Proxy attribution method.")
    ] = None,
    seed: _Seed = 0,
    model: _Model = None,
    device: _Device = None,
    json_out: _Json = None,
    no_progress: _NoProgress = False,
) -> None:
    """AMPLIFY: few-shot prompts with rationales from a proxy's attributions, vs two controls."""
    from ..improve.experiments import amplify_demo

    if split not in ("train", "test", "shift"):
        raise InputError(f"split must be train, test or shift, got {split!r}")
    out, err = _prepare(json_out)
    if method is not None:

        check_method(method)
    m = _load(model, device)
    px = _load(proxy, device) if proxy is not None else None
    res = amplify_demo(m, proxy=px, split=split, n_pool=n_pool, n_queries=n_queries,
                       n_shots=shots, k=k, seed=seed, progress=not no_progress,
                       **({"method": method} if method else {}))
    _emit(res, out, err, json_out, None)
    if str(json_out) != "-":
        out.print("demonstrations (MCS, rationale words):", markup=False)
        for d in res.demos:
            out.print(
                f"  {d['mcs']:+.3f} {d['prompt']}{d['target']}  <- {', '.join(d['words'])}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


# --------------------------------------------------------------------------- distill
def distill_cmd(
    fractions: Annotated[str, typer.Option(
        "--fractions", metavar="F,..", help="Shares of the training data (0 < F <= 1).")
    ] = "0.1,0.25,0.5,1",
    seeds: Annotated[str, typer.Option("--seeds", metavar="S,..", help="Seeds.")] = "0,1,2",
    n_train: Annotated[int, typer.Option("--n-train", min=10, help="Examples at 100%.")] = 400,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Held-out items.")] = 300,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Steps per student.")] = 200,
    rationale_weight: Annotated[float, typer.Option(
        "--rationale-weight", min=0.0, help="Weight of the rationale task's loss.")] = 1.0,
    rationale: Annotated[str, typer.Option(
        "--rationale", help="Rationale task: 'inline' (the question with every option's "
        "category after it), 'options' (every option's category after the question) or "
        "'chain' (the organisms' chain).")] = "inline",
    json_out: _Json = None,
    no_progress: _NoProgress = False,
) -> None:
    """Rationale distillation: students trained on label + rationale vs label only, on the
    organism task, at each share of the data (a data-efficiency curve)."""
    from ..improve.distill import RATIONALES, DistillConfig, distill_curve

    out, err = _prepare(json_out)
    fr = _floats(fractions, "--fractions")
    if not all(0 < f <= 1 for f in fr):
        raise InputError(f"--fractions must be in (0, 1], got {fractions!r}")
    sd = _ints(seeds, "--seeds")
    if not sd:
        raise InputError("--seeds is empty; give a comma list of integers")
    if rationale not in RATIONALES:
        raise InputError(f"unknown --rationale {rationale!r}; choose one of "
                         f"{', '.join(RATIONALES)}")
    cfg = DistillConfig(n_train=n_train, n_test=n_test, steps=steps,
                        rationale_weight=rationale_weight, rationale=rationale)
    rep = distill_curve(fr, sd, config=cfg, progress=not no_progress)
    _emit(rep, out, err, json_out, None)


_COMMANDS = {"shortcuts": shortcuts, "finetune": finetune_cmd, "steer": steer_cmd,
             "edit": edit_cmd, "amplify": amplify_cmd, "distill": distill_cmd}


def register(app: typer.Typer) -> None:
    """Add ``shortcuts``, ``finetune``, ``steer``, ``edit``, ``amplify`` and ``distill`` to the
    main app."""
    for name, fn in _COMMANDS.items():
        app.command(name)(fn)
