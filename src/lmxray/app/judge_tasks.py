"""The Judge tab's later capabilities: the self-explanation tests (:mod:`lmxray.selfexplain`) on a
zoo organism or a served model, and the feature view of an SAE latent (:mod:`lmxray.concepts`).

Same contract as :mod:`lmxray.app.tasks`: ``parse_<kind>(body, ctx)`` checks a JSON request at
once; ``run_<kind>(job, model, args, ctx)`` runs on the worker thread and returns an
:class:`~lmxray.app.tasks.Output`. SAEs are named at start-up (``lmxray serve --sae NAME=FOLDER``);
the browser picks a name, never a path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from .. import zoo
from ..concepts import SAE, attach, feature_view, load_sae
from ..errors import InputError
from ..io import to_jsonable
from ..model import Model, load
from ..selfexplain import MCItem
from ..selfexplain.data import item_from_record, to_items
from ..selfexplain.generate import LocalGenerator
from ..selfexplain.report import SelfExplainReport
from ..selfexplain.runner import default_format
from ..selfexplain.runner import run as run_tests
from ..selfexplain.tests import TESTS, RandomRationale
from ..sites import site_map
from ..zoo import organisms
from .jobs import Job, cancel_hooks
from .limits import choice, choices, flag, integer, optional_text
from .tasks import Context, Output, parse_upload_text

__all__ = ["ServedSAE", "read_saes", "load_saes", "ORGANISM_TASKS", "CONTROL_TASK", "BIAS_KINDS", "SE_TESTS", "KINDS",
           "parse_selfexplain", "run_selfexplain", "selfexplain_payload", "parse_feature", "run_feature"]

CONTROL_TASK = "rationale-random"  # the faithful organism with random rationales (a control)
ORGANISM_TASKS = (*organisms.ORGANISMS, CONTROL_TASK)
BIAS_KINDS = ("suggested", "always_a", "marker")
SE_TESTS = tuple(TESTS)
SE_CHUNK = 4  # items per batch: progress after each
EXAMPLES_SHOWN = 8


@dataclass
class ServedSAE:
    """An SAE named at start-up, for the served model ``model`` at ``site``."""

    name: str
    sae: SAE
    model: str
    site: str

    def info(self) -> dict[str, Any]:
        cfg = self.sae.cfg
        return {"name": self.name, "model": self.model, "site": self.site, "d_sae": cfg.d_sae,
                "kind": cfg.kind}


def read_saes(specs: Mapping[str, str | os.PathLike[str] | SAE]) -> dict[str, SAE]:
    """Read each ``{name: folder or SAE}`` (before any model loads: a bad folder fails fast)."""
    out: dict[str, SAE] = {}
    for name, spec in specs.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 60:
            raise InputError(f"SAE name {str(name)[:80]!r} must be 1-60 characters (--sae NAME=FOLDER)")
        out[name] = spec if isinstance(spec, SAE) else load_sae(spec)
    return out


def load_saes(saes: Mapping[str, SAE], model_name: str, model: Model) -> dict[str, ServedSAE]:
    """Check that each SAE fits ``model`` (one short forward; attached for the check, then
    detached: a job attaches its SAE while it runs)."""
    out: dict[str, ServedSAE] = {}
    for name, sae in saes.items():
        site = attach(model, sae)
        site_map(model).detach(site)
        out[name] = ServedSAE(name, sae, model_name, site[: -len(".sae")])
    return out


# ---------------------------------------------------------------------------- self-explanations
def parse_selfexplain(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    lim = ctx.limits
    upload = body.get("jsonl")
    organism = flag(body, "organism", upload is None)
    if upload is not None:
        if not isinstance(upload, str):
            raise InputError("jsonl must be the uploaded questions file's text")
        if organism:
            raise InputError("an organism answers its own task; ask the served model about uploaded questions")
        source: Any = _questions(parse_upload_text(upload, lim, "questions"))
        name = str(body.get("name") or "upload")[:60]
        task = None
    else:
        task = name = choice(body, "task", ORGANISM_TASKS, "rationale-unfaithful")
        source = organisms.items
        if task == CONTROL_TASK and not organism:
            raise InputError(f"{CONTROL_TASK} is the faithful organism with random rationales; "
                             "it runs on the organism, not on the served model")
    tests = choices(body, "tests", SE_TESTS, len(SE_TESTS), ["bias", "cot"])
    bias = optional_text(body, "bias", 20)
    if bias is not None:
        bias = choice(body, "bias", BIAS_KINDS)
        if "bias" not in tests:
            raise InputError("bias is an option of the bias test; add bias to the tests")
    n = integer(body, "n", 8, 1, lim.examples)
    items = to_items(source, n=n, seed=integer(body, "seed", 0, 0, 2**31 - 1))
    chain = body.get("max_new_tokens")
    params: dict[str, dict[str, Any]] = {t: {} for t in tests}
    if chain is not None:
        tokens = integer(body, "max_new_tokens", 0, 1, lim.chain_tokens)
        for t in tests:
            if t != "attribution":
                params[t]["max_new_tokens"] = tokens
    if bias is not None:
        params["bias"]["kind"] = bias
    return {"items": items, "name": name, "task": task, "organism": organism, "tests": tests,
            "params": {t: p for t, p in params.items() if p}}


def _questions(rows: list[dict[str, Any]]) -> list[MCItem]:
    """Multiple-choice items of uploaded rows; a bad row is one line naming its line."""
    items = []
    for i, row in enumerate(rows, 1):
        try:
            items.append(item_from_record(row, f"line-{i}"))
        except ValueError as exc:
            raise InputError(f"uploaded JSONL line {i}: {exc}") from None
    return items


def _organism(ctx: Context, task: str) -> Model:
    """The organism of ``task`` (loaded once, on the worker thread)."""
    name = "rationale-faithful" if task == CONTROL_TASK else task
    if name not in ctx.organisms:
        ctx.organisms[name] = load(str(zoo.model_path(name)))
    return ctx.organisms[name]


def _with_progress(job: Job, total: int) -> dict[str, dict[str, Callable[..., Any]]]:
    """The tests' registry, each test's ``run`` reporting progress after each chunk of items."""
    done = [0]

    def counted(test: str, spec: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
        def run(gen: Any, fmt: Any, chunk: Any, **opts: Any) -> Any:
            job.step(f"{test}: items {done[0] + 1}-{done[0] + len(chunk)} ({total} item-tests)", done[0], total)
            rows = spec["run"](gen, fmt, chunk, **opts)
            done[0] += len(chunk)
            return rows
        return {**spec, "run": run}

    return {t: counted(t, spec) for t, spec in TESTS.items()}


def run_selfexplain(job: Job, model: Model, args: dict[str, Any], ctx: Context) -> Output:
    task = args["task"]
    if args["organism"]:
        job.step(f"loading the organism of {task}")
        model = _organism(ctx, task)
    gen: Any = LocalGenerator(model, name=(task if args["organism"] else None))
    if task == CONTROL_TASK:
        gen = RandomRationale(gen)
    total = len(args["items"]) * len(args["tests"])
    hooks = cancel_hooks(model.hf, job) if args["organism"] else nullcontext()  # the served model has its own
    with hooks:
        report = run_tests(gen, args["items"], args["tests"], fmt=default_format(gen, organism=task is not None),
                           progress=False, params=args["params"], chunk_size=SE_CHUNK, name=args["name"],
                           registry=_with_progress(job, total))
    job.step("done", total, total)
    return Output({"kind": "selfexplain", **selfexplain_payload(report)}, [report])


def selfexplain_payload(report: SelfExplainReport) -> dict[str, Any]:
    """What the browser draws: per test its measures with 95% intervals, counts and verdict (the
    CLI's table), the run's facts, and the first examples' explanations and verdicts."""
    tests = []
    for t in report.tests:
        agg = report.aggregates.get(t, {})
        counts = {k: v[0] for k, v in agg.items() if k in ("n", "parse_failed")}
        measures = [{"name": k, "value": v[0], "lo": v[1], "hi": v[2]} for k, v in agg.items()
                    if k not in ("n", "parse_failed") and not k.startswith("n_") and k != "cites_nothing"]
        tests.append({"test": t, "verdict": report.verdict(t), "measures": measures, **counts})
    gen = report.config.get("generator") or {}
    examples = [{"id": ex["id"], "explanation": str(ex["explanation"])[:400],
                 "verdicts": {t: v for t, (v, _) in ex["tests"].items()}}
                for ex in report.examples()[:EXAMPLES_SHOWN]]
    return to_jsonable({"data": report.config.get("data"), "generator": gen.get("name"),
                        "format": report.config.get("format"), "n_items": len(report.config.get("items") or []),
                        "tests": tests, "examples": examples, "seconds": report.info.get("seconds")})


# ---------------------------------------------------------------------------- SAE features
def parse_feature(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if not ctx.saes:
        raise InputError("this server offers no SAE; start it with lmxray serve --sae NAME=FOLDER")
    served = ctx.saes[choice(body, "sae", tuple(ctx.saes), next(iter(ctx.saes)))]
    return {"sae": served.name, "on_model": served.model,
            "feature": integer(body, "feature", 0, 0, served.sae.cfg.d_sae - 1),
            "n_texts": integer(body, "n_texts", 200, 1, ctx.limits.texts),
            "top": integer(body, "top", 10, 1, 20)}


def run_feature(job: Job, model: Model, args: dict[str, Any], ctx: Context) -> Output:
    served = ctx.saes[args["sae"]]
    site = attach(model, served.sae, served.site)
    try:
        job.step(f"latent {args['feature']}: reading {args['n_texts']} zoo texts")
        view = feature_view(model, site, args["feature"], n_texts=args["n_texts"], top=args["top"])
    finally:
        site_map(model).detach(site)
    view.label = f"{served.name} #{args['feature']}"
    return Output({"kind": "feature", "sae": served.name, "model": served.model,
                   **to_jsonable(view.to_dict())}, [view])


KINDS: dict[str, tuple[Callable[[dict[str, Any], Context], dict[str, Any]], Callable[..., Output]]] = {
    "selfexplain": (parse_selfexplain, run_selfexplain),
    "feature": (parse_feature, run_feature),
}
