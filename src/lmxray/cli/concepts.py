"""``lmxray sae train | eval | show | scan`` and ``lmxray tcav``: sparse autoencoders and concept
vectors (thin layers over :mod:`lmxray.concepts`).

    lmxray sae train --site layers.2.resid_post --out sae/ [--kind topk|batchtopk|jumprelu|relu]
                     [--width 1024] [--k 32] [--steps 600] [--batch-tokens 2048] [--lr 1e-3]
                     [--corpus FILE_OR_FOLDER] [--checkpoint DIR] [--no-resume] [--json FILE]
    lmxray sae eval SAE_DIR [--site S] [--corpus C] [--n-texts 200] [--json F] [--html F]
    lmxray sae show SAE_DIR --feature N [--corpus C] [--n-texts 500] [--json F] [--html F]
    lmxray sae scan SAE_DIR [--json F] [--html F]        # zoo concepts as latents (AUROC)
    lmxray tcav --site S (--continent Africa | --concept NAME=FILE.txt ... --inputs FILE.jsonl)
                [--n-random 10] [--pool last|mean] [--json F] [--html F]

An SAE folder is SAELens' format (``cfg.json`` + ``sae_weights.safetensors``): folders written by
SAELens load, and ours load in SAELens. Feature packages are imported inside each command (the
CLI's documented lazy loading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import DeviceOpt, HtmlOpt, ModelOpt, ResultJsonOpt

__all__ = ["register", "sae_app"]

sae_app = typer.Typer(help="Sparse autoencoders: train, evaluate, inspect latents.",
                      no_args_is_help=True)

SaeArg = Annotated[Path, typer.Argument(metavar="SAE_DIR", help="An SAE folder (SAELens format).")]
CorpusOpt = Annotated[str | None, typer.Option(
    "--corpus", help="Text source: a .txt / .jsonl file or a folder of them (default: zoo text).")]
SiteOpt = Annotated[str | None, typer.Option("--site", help="Site name, e.g. layers.2.resid_post.")]


def _check_folder_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the SAE")
    if not out.parent.is_dir():
        raise InputError(f"the folder {out.parent} of --out does not exist; create it first")


def _finish(result: Any, json_path: Path | None, html_path: Path | None) -> None:
    from ._common import consoles, write_outputs

    out, err = consoles()
    write_outputs([(json_path, result.to_json), (html_path, result.to_html)], err)
    if not any(p is not None and str(p) == "-" for p in (json_path, html_path)):
        result.show(out)


def _load(sae_dir: Path, model: str | None, device: str | None, site: str | None) -> tuple[Any, Any, str]:
    from ..concepts import attach, load_sae
    from ._common import load_model

    sae = load_sae(sae_dir)
    m = load_model(model, device)
    name = attach(m, sae, site)
    return m, sae, name


def train_cmd(
    site: Annotated[str, typer.Option("--site", help="Site to train on (layers.2.resid_post).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the SAE to.")],
    kind: Annotated[str, typer.Option("--kind", help="topk, batchtopk, jumprelu or relu.")] = "topk",
    width: Annotated[int, typer.Option("--width", help="Number of latents.")] = 1024,
    k: Annotated[int, typer.Option("--k", help="Active latents per token (topk, batchtopk).")] = 32,
    steps: Annotated[int, typer.Option("--steps")] = 600,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens")] = 2048,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    l1: Annotated[float, typer.Option("--l1", help="L1 coefficient (relu).")] = 1.4,
    l0_coef: Annotated[float, typer.Option("--l0-coef", help="L0 coefficient (jumprelu).")] = 0.05,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    corpus: CorpusOpt = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint folder.")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore a checkpoint.")] = False,
    eval_texts: Annotated[int, typer.Option("--eval-texts", help="Texts for the final evaluation (0: none).")] = 100,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    json_path: ResultJsonOpt = None,
) -> None:
    """Train an SAE at a site on activations streamed from a corpus; save it; evaluate it."""
    from ..concepts import TrainConfig, evaluate_sae, train_sae
    from ..concepts.data import check_corpus
    from ._common import check_outputs, consoles, load_model

    cfg = TrainConfig(kind=kind, d_sae=width, k=k, steps=steps, batch_tokens=batch_tokens, lr=lr,
                      l1=l1, l0_coef=l0_coef, seed=seed)
    cfg.check()
    if eval_texts < 0:
        raise InputError(f"--eval-texts must be >= 0, got {eval_texts}")
    _check_folder_out(out)
    check_outputs(json_path)
    check_corpus(corpus)
    m = load_model(model, device)
    run = train_sae(m, site, cfg, corpus=corpus, checkpoint=checkpoint, resume=not no_resume)
    run.sae.save(out)
    _, err = consoles()
    err.print(f"wrote {out} ({run.info['tokens']} tokens, {run.info['tokens_per_s']:.0f} tokens/s)",
              style="dim", highlight=False, markup=False)
    if eval_texts:
        _finish(evaluate_sae(m, run.sae, corpus=corpus, n_texts=eval_texts), json_path, None)


def eval_cmd(
    sae_dir: SaeArg, site: SiteOpt = None, corpus: CorpusOpt = None,
    n_texts: Annotated[int, typer.Option("--n-texts")] = 200,
    model: ModelOpt = None, device: DeviceOpt = None,
    json_path: ResultJsonOpt = None, html_path: HtmlOpt = None,
) -> None:
    """L0, variance explained, CE loss recovered, dead and dense latents of an SAE."""
    from ..concepts import evaluate_sae
    from ._common import check_outputs

    if n_texts < 1:
        raise InputError(f"--n-texts must be >= 1, got {n_texts}")
    check_outputs(json_path, html_path)
    m, sae, name = _load(sae_dir, model, device, site)
    result = evaluate_sae(m, sae, name[:-4], corpus=corpus, n_texts=n_texts)
    _finish(result, json_path, html_path)


def show_cmd(
    sae_dir: SaeArg,
    feature: Annotated[int, typer.Option("--feature", help="Latent index.")],
    site: SiteOpt = None, corpus: CorpusOpt = None,
    n_texts: Annotated[int, typer.Option("--n-texts")] = 500,
    top: Annotated[int, typer.Option("--top", help="Contexts shown.")] = 10,
    model: ModelOpt = None, device: DeviceOpt = None,
    json_path: ResultJsonOpt = None, html_path: HtmlOpt = None,
) -> None:
    """One latent: top-activating contexts, activation histogram, logit effects."""
    from ..concepts import feature_view, load_sae
    from ._common import check_outputs

    if n_texts < 1 or top < 1:
        raise InputError("--n-texts and --top must be >= 1")
    check_outputs(json_path, html_path)
    d_sae = load_sae(sae_dir).cfg.d_sae
    if not 0 <= feature < d_sae:
        raise InputError(f"--feature {feature} is out of range; the SAE has {d_sae} latents "
                         f"(0..{d_sae - 1})")
    m, _, name = _load(sae_dir, model, device, site)
    _finish(feature_view(m, name, feature, corpus=corpus, n_texts=n_texts, top=top),
            json_path, html_path)


def scan_cmd(
    sae_dir: SaeArg, site: SiteOpt = None,
    n: Annotated[int, typer.Option("--n", help="Examples per concept set.")] = 200,
    model: ModelOpt = None, device: DeviceOpt = None,
    json_path: ResultJsonOpt = None, html_path: HtmlOpt = None,
) -> None:
    """The zoo's known concepts (shortcut marker, task, continent) against the SAE's latents."""
    from ..concepts import scan_concepts
    from ._common import check_outputs

    if n < 4:
        raise InputError(f"--n must be >= 4, got {n}")
    check_outputs(json_path, html_path)
    _finish(scan_concepts(*_load(sae_dir, model, device, site)[::2], n=n), json_path, html_path)


def _read_concepts(specs: list[str]) -> dict[str, list[str]]:
    from ..concepts.data import read_texts

    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise InputError(f"--concept {spec!r} must be NAME=FILE (a .txt or .jsonl of texts)")
        out[name.strip()] = read_texts(path)
    return out


def _read_inputs(path: Path) -> tuple[list[str], list[str]]:
    from ..io import read_jsonl

    rows = read_jsonl(path, what="TCAV inputs")
    prompts, targets = [], []
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
            raise InputError(f"{path} line {i}: a TCAV input needs 'prompt' and 'target' strings")
        prompts.append(row["prompt"])
        targets.append(row["target"])
    return prompts, targets


def tcav_cmd(
    site: Annotated[str, typer.Option("--site", help="Site of the CAVs (layers.2.resid_post).")],
    continent: Annotated[str | None, typer.Option("--continent", help="Zoo demo: a continent of the facts.")] = None,
    concept: Annotated[list[str] | None, typer.Option("--concept", help="NAME=FILE (texts); repeatable.")] = None,
    inputs: Annotated[Path | None, typer.Option("--inputs", help="JSONL of {prompt, target}.")] = None,
    n_random: Annotated[int, typer.Option("--n-random", help="Runs per concept (fresh random sets) and random concepts in the null.")] = 30,
    pool: Annotated[str, typer.Option("--pool", help="last or mean (token pooling).")] = "mean",
    alpha: Annotated[float, typer.Option("--alpha")] = 0.05,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: ModelOpt = None, device: DeviceOpt = None,
    json_path: ResultJsonOpt = None, html_path: HtmlOpt = None,
) -> None:
    """TCAV scores with Kim et al.'s two-sided t-test against random concepts (Bonferroni over
    the concepts tested)."""
    from ..concepts import continent_tcav, tcav
    from ._common import check_outputs, load_model

    if (continent is None) == (not concept and inputs is None):
        raise InputError("give either --continent or --concept NAME=FILE with --inputs FILE.jsonl")
    if continent is None and (not concept or inputs is None):
        raise InputError("--concept needs --inputs FILE.jsonl (and the other way round)")
    if n_random < 2:
        raise InputError(f"--n-random must be >= 2, got {n_random}")
    check_outputs(json_path, html_path)
    if continent is not None:
        m = load_model(model, device)
        result = continent_tcav(m, site, continent, n_random=n_random, seed=seed, pool=pool,
                                alpha=alpha)
    else:
        assert concept is not None and inputs is not None
        sets = _read_concepts(concept)
        prompts, targets = _read_inputs(inputs)
        m = load_model(model, device)
        result = tcav(m, site, sets, prompts, targets, n_random=n_random, pool=pool,
                      alpha=alpha, seed=seed, target_name=inputs.name)
    _finish(result, json_path, html_path)


def register(app: typer.Typer) -> None:
    """Add ``sae`` (train, eval, show, scan) and ``tcav`` to the main app."""
    sae_app.command("train")(train_cmd)
    sae_app.command("eval")(eval_cmd)
    sae_app.command("show")(show_cmd)
    sae_app.command("scan")(scan_cmd)
    app.add_typer(sae_app, name="sae")
    app.command("tcav")(tcav_cmd)
