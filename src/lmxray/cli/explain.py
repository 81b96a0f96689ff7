"""``lmxray explain`` and ``lmxray methods``: token attribution of a model's output.

Method parameters are declared once, in each method's signature; the CLI passes only what the
user gave, so every default (integrated gradients' ``n_steps`` included) is the method's, and
``lmxray methods --verbose`` lists them.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import (
    DEFAULT_METHOD,
    DEFAULT_NEW_TOKENS,
    DeviceOpt,
    HtmlOpt,
    JsonOpt,
    MaxNewTokensOpt,
    ModelOpt,
    check_method,
    check_result_outputs,
    check_target_options,
    consoles,
    count_option,
    emit_result,
    is_stdout,
    load_model,
    write_outputs,
)

__all__ = ["register", "explain", "methods"]



class TargetFnName(str, Enum):
    logprob = "logprob"
    prob = "prob"
    logit = "logit"


class FeatureKind(str, Enum):
    sentence = "sentence"
    paragraph = "paragraph"
    document = "document"


class ContextMethod(str, Enum):
    ablation = "ablation"
    loo = "loo"
    shapley = "shapley"


class NormalizeMode(str, Enum):
    step = "step"
    global_ = "global"


# --------------------------------------------------------------------------- commands
def _parse_baseline(text: str) -> int | str:
    text = text.strip()
    if not text:
        raise InputError("--baseline is empty; use auto, zero, pad, unk, eos or a token id")
    return int(text) if text.lstrip("-").isdigit() else text


def explain(
    prompt: Annotated[str, typer.Argument(help="The prompt to explain.", show_default=False)],
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="TEXT",
            help="Continuation to explain (teacher-forced). Default: generate.",
        ),
    ] = None,
    max_new_tokens: MaxNewTokensOpt = None,
    foil: Annotated[str | None, typer.Option(
        "--foil", metavar="TEXT", help="Contrastive alternative: explain f(target) - f(foil).")] = None,
    method: Annotated[
        str,
        typer.Option("--method", metavar="NAME", help="Attribution method (see 'lmxray methods')."),
    ] = DEFAULT_METHOD,
    model: ModelOpt = None,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    device: DeviceOpt = None,
    target_fn: Annotated[
        TargetFnName, typer.Option("--target-fn", help="What to explain at each step.")
    ] = TargetFnName.logprob,
    n_steps: Annotated[int | None, count_option(
        "--n-steps", help="Integration steps (integrated gradients; default: the method's, see "
        "'lmxray methods --verbose').",
    )] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="B", help="Baseline: auto, zero, pad, unk, eos or a token id.")] = None,
    normalize: Annotated[
        NormalizeMode, typer.Option("--normalize", help="Colour scale of the terminal view.")
    ] = NormalizeMode.step,
    max_steps: Annotated[
        int, count_option("--max-steps", help="Show at most N steps in the terminal.")
    ] = 20,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check the explanation: faithfulness against random attributions "
        "(p-value), stability, completeness/convergence; a verdict with reasons.",
    )] = False,
    verify_k: Annotated[int | None, typer.Option(
        "--verify-k", metavar="K", help="--verify: random attributions in the null [default: 49].",
    )] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", metavar="A", help="--verify: significance level, in (0, 1) [default: 0.05].",
    )] = None,
    stability: Annotated[str | None, typer.Option(
        "--stability", metavar="CHECKS",
        help="--verify: auto, none, all, or a comma list of swap, whitespace, noise [default: auto].",
    )] = None,
    model_null: Annotated[bool, typer.Option(
        "--model-null", help="--verify: also run the method on a randomised copy of the model.",
    )] = False,
    features: Annotated[
        FeatureKind | None,
        typer.Option("--features", help="Context attribution: score the prompt's sentences, "
                     "paragraphs or documents instead of its tokens (see docs/context.md)."),
    ] = None,
    query: Annotated[
        str, typer.Option("--query", metavar="TEXT", help="With --features: fixed text after "
                          "the prompt (the question), never removed.")
    ] = "",
    context_method: Annotated[
        ContextMethod, typer.Option("--context-method", help="With --features: ContextCite "
                                    "ablations, exact leave-one-out or exact Shapley.")
    ] = ContextMethod.ablation,
    n_ablations: Annotated[
        int, typer.Option("--n-ablations", min=1, metavar="N",
                          help="With --features and ablation: random ablations.")
    ] = 64,
) -> None:
    """Attribute a target (given or generated) to the prompt tokens, and show the heatmap."""
    if features is not None:
        if method != DEFAULT_METHOD or foil is not None or n_steps is not None or verify:
            raise InputError("--method, --foil, --n-steps and --verify do not apply with "
                             "--features; choose --context-method ablation, loo or shapley")
        return _explain_context(prompt, target, max_new_tokens, model, device, json_out,
                                html_out, features.value, query, context_method.value, n_ablations)
    check_target_options(target, max_new_tokens, foil)
    verify_kw = _verify_options(verify, verify_k, alpha, stability, model_null, foil)
    check_result_outputs(json_out, html_out)
    check_method(method)
    params: dict[str, Any] = {}
    if n_steps is not None:
        params["n_steps"] = n_steps
    if baseline is not None:
        params["baseline"] = _parse_baseline(baseline)

    m = load_model(model, device)
    result = m.attribute(
        prompt,
        target=target,
        max_new_tokens=max_new_tokens,  # None: the API's default (DEFAULT_NEW_TOKENS)
        foil=foil,
        method=method,
        target_fn=target_fn.value,
        verify=verify_kw if verify_kw is not None else False,
        **params,
    )
    assert not isinstance(result, list)
    emit_result(result, json_out, html_out, max_steps=max_steps, normalize=normalize.value)


def _verify_options(
    verify: bool, k: int | None, alpha: float | None, stability: str | None, model_null: bool,
    foil: str | None,
) -> dict[str, Any] | None:
    """The --verify options as ``verify=`` keyword arguments (checked before any work)."""
    given = {"--verify-k": k, "--alpha": alpha, "--stability": stability,
             "--model-null": model_null or None}
    if not verify:
        extra = [name for name, v in given.items() if v is not None]
        if extra:
            raise InputError(f"{extra[0]} needs --verify")
        return None
    if foil is not None:
        raise InputError("--verify does not support --foil (contrastive attributions); drop one")
    kw: dict[str, Any] = {"model_null": model_null}
    if k is not None:
        kw["k"] = k
    if alpha is not None:
        kw["alpha"] = alpha
    if stability is not None:
        kw["stability"] = [c.strip() for c in stability.split(",")] if stability.strip() else [""]
    from ..attribution.verify import check_params  # lazy: the CLI loads features on use

    check_params(kw)
    return kw


def _explain_context(
    prompt: str, target: str | None, max_new_tokens: int | None, model: Any, device: Any,
    json_out: Any, html_out: Any, kind: str, query: str, method: str, n_ablations: int,
) -> None:
    """``explain --features KIND``: context attribution (lmxray.attribution.context)."""
    from ..attribution.context import attribute_context

    check_target_options(target, max_new_tokens, None)
    check_result_outputs(json_out, html_out)
    m = load_model(model, device)
    result = attribute_context(
        m, prompt, query=query, target=target, sources=kind, method=method,
        n_ablations=n_ablations, max_new_tokens=max_new_tokens or DEFAULT_NEW_TOKENS,
    )
    out, err = consoles()
    if not (is_stdout(json_out) or is_stdout(html_out)):
        out.print(*result.renderables())
    write_outputs(
        [(json_out, lambda: result.to_json() + "\n"), (html_out, lambda: result.to_html())], err
    )


def methods(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also list every parameter with its default."),
    ] = False,
) -> None:
    """List the registered attribution methods (--verbose: their parameters and defaults)."""
    from rich.table import Table
    from rich.text import Text

    from ..attribution import method_specs

    out, _ = consoles()
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("method", no_wrap=True)
    table.add_column("description")
    for name, spec in method_specs().items():
        table.add_row(Text(name, style="bold"), Text(spec.description))
        if verbose:
            for param, default in spec.params.items():
                table.add_row(Text(f"  {param}", style="dim"), Text(f"default {default!r}"))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``explain`` and ``methods`` to the root app."""
    app.command()(explain)
    app.command()(methods)
