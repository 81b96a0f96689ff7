"""CLI commands for black-box explanation (mounted by ``lmxray.cli`` through :func:`register`).

    lmxray explain-endpoint PROMPT --url URL --tokenizer ID_OR_PATH [--served-model NAME]
                            [--target TEXT | --max-new-tokens N] [--foil TEXT]
                            [--method kernel_shap] [--n-samples N] [--features token|word|sentence]
                            [--seed S] [--json FILE] [--html FILE]
    lmxray serve-completions [--model ID_OR_PATH] [--host 127.0.0.1] [--port 8000]

``explain-endpoint`` explains a model served behind an OpenAI-compatible ``/v1/completions``
endpoint (vLLM, or ``serve-completions``) with a perturbation method; ``serve-completions`` serves
a local model that way (loopback only unless ``--allow-remote``).
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import typer

from ..errors import InputError
from . import _common as common
from ._common import DeviceOpt, HtmlOpt, JsonOpt, MaxNewTokensOpt, ModelOpt

__all__ = ["register", "explain_endpoint", "serve_completions"]


def explain_endpoint(
    prompt: Annotated[str, typer.Argument(help="The prompt to explain.", show_default=False)],
    url: Annotated[str, typer.Option("--url", metavar="URL",
                                     help="Server base, e.g. http://127.0.0.1:8000/v1.")],
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", metavar="ID_OR_PATH",
        help="The served model's tokenizer: hub id, folder, or an embedded model name (lmxray-tiny).")],
    served_model: Annotated[str | None, typer.Option(
        "--served-model", metavar="NAME", help="The 'model' field of requests.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", metavar="TEXT")] = None,
    max_new_tokens: MaxNewTokensOpt = None,
    foil: Annotated[str | None, typer.Option("--foil", metavar="TEXT")] = None,
    method: Annotated[str, typer.Option("--method", metavar="NAME")] = "kernel_shap",
    n_samples: Annotated[int | None, typer.Option("--n-samples", min=1, metavar="N")] = None,
    features: Annotated[str | None, typer.Option(
        "--features", metavar="token|word|sentence")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", metavar="VAR", help="Read the API key from this environment variable.")] = None,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
) -> None:
    """Explain a served model (OpenAI-compatible completions with echo + logprobs)."""
    from ..blackbox import connect
    from ..blackbox.scorer import blackbox_methods

    common.check_target_options(target, max_new_tokens, foil)
    if method not in blackbox_methods():
        raise InputError(
            f"method {method!r} cannot run on a served model; use one of: "
            f"{', '.join(blackbox_methods())}"
        )
    common.check_result_outputs(json_out, html_out)
    given = {"n_samples": n_samples, "features": features, "seed": seed}
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise InputError(f"environment variable {api_key_env} is not set")
    remote = connect(url, tokenizer, model=served_model, api_key=key)
    result = remote.attribute(
        prompt, target=target, foil=foil, method=method,
        max_new_tokens=max_new_tokens, **params,
    )
    common.emit_result(result, json_out, html_out)


def serve_completions(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    name: Annotated[str | None, typer.Option("--name", help="Model name to answer to.")] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Bind a non-loopback address.")] = False,
) -> None:
    """Serve a local model as an OpenAI-compatible /v1/completions endpoint (Ctrl-C stops)."""
    from ..blackbox.server import serve

    m = common.load_model(model, device)
    srv = serve(m, host=host, port=port, name=name, allow_remote=allow_remote)
    _, err = common.consoles()
    err.print(f"serving {srv.name!r} at {srv.url} (Ctrl-C to stop)", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()


def register(app: typer.Typer) -> None:
    """Add ``explain-endpoint`` and ``serve-completions`` to the main app."""
    app.command("explain-endpoint")(explain_endpoint)
    app.command("serve-completions")(serve_completions)
