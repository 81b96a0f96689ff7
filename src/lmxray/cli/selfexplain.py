"""``lmxray self-explain``: faithfulness tests of the explanations a model writes in words (a thin
layer over :func:`lmxray.selfexplain.runner.run`).

    lmxray self-explain [DATA.jsonl] [--task rationale-faithful|rationale-unfaithful|rationale-random]
                        [--model ID_OR_PATH | --endpoint URL [--endpoint-model NAME]
                         [--api chat|completions] [--api-key-env VAR] [--retries N] [--timeout S]]
                        [--tests all|bias,cot,...] [--n N] [--seed S] [--bias KIND]
                        [--max-new-tokens N] [--out rows.jsonl] [--no-resume]
                        [--json FILE] [--html FILE] [--parquet FILE] [--examples K]

``DATA`` is a JSONL file of multiple-choice questions (``question``, ``options``, ``answer``;
see :mod:`lmxray.selfexplain.data`), asked in Turpin et al.'s format (with the local model's
chat template when it has one). ``--task`` runs a zoo organism on its own task and format
(``rationale-random`` is the faithful organism with random rationales, a control); with
``--model`` or ``--endpoint`` the organism task is asked of that model instead. ``--endpoint``
sends every prompt to an OpenAI-compatible server (tests that need the weights, ``attribution``,
are left out of ``all``). Rows stream to ``--out`` (default ``self-explain-<data>.jsonl``); a
rerun with the same options resumes where the last one stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import DeviceOpt, ModelOpt, ResultJsonOpt

__all__ = ["register", "self_explain_command", "LOCAL_ONLY_TESTS", "CONTROL_TASK"]

LOCAL_ONLY_TESTS = ("attribution",)  # need the model's weights (gradients)
CONTROL_TASK = "rationale-random"
DEFAULT_TASK_ITEMS = 50


def _task_names() -> tuple[str, ...]:
    from ..zoo import organisms

    return (*organisms.ORGANISMS, CONTROL_TASK)


def _generator(model: str | None, device: str | None, endpoint: str | None,
               endpoint_model: str | None, api: str, api_key_env: str | None, retries: int,
               timeout: float, task: str | None) -> Any:
    """The generator: an endpoint, the given model, the task's organism, or the embedded model."""
    from ..selfexplain.generate import EndpointGenerator, LocalGenerator
    from ._common import load_model

    if endpoint is not None:
        return EndpointGenerator(endpoint, endpoint_model, api=api, api_key_env=api_key_env,
                                 retries=retries, timeout=timeout)
    name = None
    if model is None and task is not None:
        from ..zoo import model_path

        name = "rationale-faithful" if task == CONTROL_TASK else task
        model = str(model_path(name))
    gen = LocalGenerator(load_model(model, device), name=name)
    if task == CONTROL_TASK:
        from ..selfexplain.tests import RandomRationale

        return RandomRationale(gen)
    return gen


def _items(data: str | None, task: str | None, n: int | None, seed: int) -> tuple[list[Any], str]:
    """The questions (read before any model is loaded, so bad data fails fast) and their name."""
    from ..selfexplain.data import load_items, to_items

    if task is not None:
        from ..zoo import organisms

        return to_items(organisms.items, n=n or DEFAULT_TASK_ITEMS, seed=seed), task
    assert data is not None
    if not Path(data).is_file():
        raise InputError(f"no questions file at {data}" if not Path(data).is_dir()
                         else f"{data} is a folder; give the questions JSONL file")
    return load_items(data, n=n), Path(data).stem


def _check_choices(data: str | None, task: str | None, model: str | None, endpoint: str | None,
                   api: str) -> None:
    if data is not None and task is not None:
        raise InputError("give the questions either as DATA (a JSONL file) or as --task, not both")
    if data is None and task is None:
        raise InputError("give the questions: a JSONL file (question, options, answer per line) "
                         "or --task NAME")
    if model is not None and endpoint is not None:
        raise InputError("give either --model (run in process) or --endpoint (a served model), "
                         "not both")
    if api not in ("chat", "completions"):
        raise InputError(f"--api must be chat or completions, got {api!r}")
    if task is not None and task not in _task_names():
        raise InputError(f"unknown task {task!r}; choose from: {', '.join(_task_names())}")
    if task == CONTROL_TASK and (model is not None or endpoint is not None):
        raise InputError(f"--task {CONTROL_TASK} is the faithful organism with random rationales; "
                         "it takes no --model or --endpoint")


def _tests(tests: str, endpoint: str | None) -> str | list[str]:
    if tests != "all" or endpoint is None:
        return tests
    from ..selfexplain.runner import TESTS

    return [t for t in TESTS if t not in LOCAL_ONLY_TESTS]


def _params(tests: str | list[str], max_new_tokens: int | None, bias: str | None) -> dict[str, Any]:
    from ..selfexplain.runner import resolve_tests

    chosen = resolve_tests(tests)
    params: dict[str, dict[str, Any]] = {t: {} for t in chosen}
    if max_new_tokens is not None:
        for t in chosen:
            if t != "attribution":
                params[t]["max_new_tokens"] = max_new_tokens
    if bias is not None:
        if "bias" not in chosen:
            raise InputError("--bias is an option of the bias test; add bias to --tests")
        params["bias"]["kind"] = bias
    return {t: p for t, p in params.items() if p}


def self_explain_command(
    data: Annotated[str | None, typer.Argument(
        help="JSONL file of questions (question, options, answer).", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(
        "--task", metavar="NAME",
        help="Zoo organism task: rationale-faithful, rationale-unfaithful, rationale-random.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")] = None,
    endpoint_model: Annotated[str | None, typer.Option(
        "--endpoint-model", metavar="NAME", help="The 'model' field of requests.")] = None,
    api: Annotated[str, typer.Option("--api", metavar="chat|completions")] = "chat",
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", metavar="VAR", help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    retries: Annotated[int, typer.Option("--retries", min=0, max=20, help="Retries per request.")] = 3,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per request.")] = 60.0,
    tests: Annotated[str, typer.Option(
        "--tests", metavar="all|A,B", help="bias, cot, deletion, attribution, simulatability.")] = "all",
    n: Annotated[int | None, typer.Option("--n", min=1, metavar="N", help="Use the first N items.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the organism task sample.")] = 0,
    bias: Annotated[str | None, typer.Option(
        "--bias", metavar="KIND", help="Bias of the bias test: suggested, always_a, marker.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", min=1, max=4096, help="Tokens per chain of thought [default: 256].")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Items per batch.")] = 16,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE", dir_okay=False,
        help="Rows file (JSONL), streamed and resumable [default: self-explain-<data>.jsonl].")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an existing --out.")] = True,
    json_out: ResultJsonOpt = None,
    html_out: Annotated[Path | None, typer.Option("--html", metavar="FILE", dir_okay=False)] = None,
    parquet_out: Annotated[Path | None, typer.Option(
        "--parquet", metavar="FILE", dir_okay=False, help="Rows as Parquet (pyarrow).")] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Examples shown in the terminal.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Test whether a model's written explanations (chains of thought, rationales) are faithful."""
    from ._common import check_outputs, consoles, write_outputs

    _check_choices(data, task, model, endpoint, api)
    items, name = _items(data, task, n, seed)
    from ..selfexplain.runner import default_format, run  # torch loads here, after the data check

    chosen = _tests(tests, endpoint)
    params = _params(chosen, max_new_tokens, bias)
    out = out if out is not None else Path(f"self-explain-{name}.jsonl")
    check_outputs(out, json_out if str(json_out) != "-" else None, html_out, parquet_out)
    if parquet_out is not None:
        from ..selfexplain.report import check_parquet

        check_parquet()
    gen = _generator(model, device, endpoint, endpoint_model, api, api_key_env, retries, timeout, task)
    report = run(gen, items, chosen, fmt=default_format(gen, organism=task is not None), out=out,
                 resume=resume, progress=progress, params=params, chunk_size=chunk_size, name=name)
    stdout, err = consoles()
    if str(json_out) != "-":
        report.show(stdout, examples=examples)
    if parquet_out is not None:
        report.to_parquet(parquet_out)
        err.print(f"wrote {parquet_out}", style="dim", markup=False)
    write_outputs([(json_out, lambda: report.to_json() + "\n"), (html_out, report.to_html)], err)


def register(app: typer.Typer) -> None:
    """Add ``self-explain`` to the main ``lmxray`` Typer app."""
    app.command("self-explain")(self_explain_command)
