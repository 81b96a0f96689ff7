"""What each kind of job does: check a JSON request (at once, in the HTTP handler) and run it
(later, on the worker thread) over the public Python API.

Each kind has a ``parse_<kind>(body, ctx)`` returning the job's checked arguments and a
``run_<kind>(job, model, args)`` returning an :class:`Output`: the JSON payload the browser
draws and the :class:`lmxray.result.Result` objects that ``export`` turns into JSON or the
static HTML report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import zoo
from ..attribution.base import get_method, methods
from ..errors import InputError
from ..evaluate import Evaluation, evaluate, load_examples
from ..evaluate.report import METRIC_INFO
from ..examples import spans_to_tokens
from ..internals import TunedLens, activation_patching, causal_trace, head_scores, logit_lens
from ..io import parse_jsonl, to_jsonable
from ..model import DEFAULT_MODEL, Model, load
from ..result import Attribution, Result
from .jobs import Job
from .limits import Limits, choice, choices, flag, integer, optional_text, text

__all__ = ["Models", "Context", "Output", "KINDS", "verify_available", "parse_upload", "parse_upload_text"]

STEP_PARAM, SAMPLE_PARAM = "n_steps", "n_samples"
PATCH_SITES = ("resid_pre", "resid_post", "attn.out", "mlp.out")
TRACE_KINDS = ("resid_post", "mlp.out", "attn.out")
TUNED_LENS = {"steps": 20, "batch_size": 4, "max_tokens": 64}  # quick: ~1 min on a busy 2-core CPU
JUDGE_BATCH = 4


def verify_available() -> bool:
    """Whether this lmxray has the verification capability (``Attribution.verify``)."""
    return hasattr(Attribution, "verify")


class Models:
    """The models named at start-up: the browser picks among these names, never a path."""

    def __init__(self, names: list[str] | Mapping[str, Model]) -> None:
        self._loaded: dict[str, Model] = dict(names) if isinstance(names, Mapping) else {}
        self.names = list(names)
        if not self.names:
            raise InputError("no model to serve; pass --model NAME (default: lmxray-tiny)")
        self.lenses: dict[str, TunedLens] = {}

    def check(self, name: Any) -> str:
        if name is None:
            return self.names[0]
        if name not in self.names:
            raise InputError(f"unknown model {str(name)[:80]!r}; this server offers: {', '.join(self.names)}")
        return str(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> Model:
        """The loaded model (loaded on first use, once)."""
        if name not in self._loaded:
            self._loaded[name] = load(None if name == DEFAULT_MODEL else name)
        return self._loaded[name]


@dataclass
class Context:
    """What the jobs share: the served models, the limits, the SAEs named at start-up (name ->
    :class:`lmxray.app.judge_tasks.ServedSAE`) and the zoo organisms loaded on first use."""

    models: Models
    limits: Limits
    saes: dict[str, Any] = field(default_factory=dict)
    organisms: dict[str, Model] = field(default_factory=dict)


@dataclass
class Output:
    payload: dict[str, Any]
    results: list[Result] = field(default_factory=list)


def _method_params(method: str, body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    accepted = get_method(method).params
    out: dict[str, Any] = {}
    if STEP_PARAM in accepted:
        out[STEP_PARAM] = integer(body, STEP_PARAM, 32, 1, limits.steps)
    if SAMPLE_PARAM in accepted:
        out[SAMPLE_PARAM] = integer(body, SAMPLE_PARAM, min(25, limits.samples), 1, limits.samples)
    return out


# ---------------------------------------------------------------------------- explain / verify
def parse_explain(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    lim = ctx.limits
    chosen = choices(body, "methods", sorted(methods()), lim.methods, ["saliency"])
    target = optional_text(body, "target", lim.prompt_chars)
    if target is not None and body.get("max_new_tokens") is not None:
        raise InputError("give either a target or max_new_tokens (to generate), not both")
    return {
        "prompt": text(body, "prompt", lim.prompt_chars),
        "target": target,
        "foil": optional_text(body, "foil", lim.prompt_chars),
        "max_new_tokens": None if target is not None else integer(body, "max_new_tokens", 5, 1, lim.new_tokens),
        "methods": chosen,
        "params": {m: _method_params(m, body, lim) for m in chosen},
        "verify": flag(body, "verify"),
    }


def run_explain(job: Job, model: Model, args: dict[str, Any]) -> Output:
    results: list[Result] = []
    verdicts: list[Any] = []
    n = len(args["methods"])
    for i, method in enumerate(args["methods"]):
        job.step(f"{method}: explaining", i, n)
        a = model.attribute(args["prompt"], args["target"], method=method, foil=args["foil"],
                            max_new_tokens=args["max_new_tokens"], **args["params"][method])
        assert isinstance(a, Attribution)
        results.append(a)
        if args["verify"]:
            verdicts.append(_verdict(job, model, a))
    job.step("done", n, n)
    payload = {"kind": "explain", "prompt": args["prompt"],
               "attributions": [r.to_dict() for r in results], "verdicts": verdicts or None}
    return Output(payload, results)


def _verdict(job: Job, model: Model, a: Attribution) -> Any:
    if not verify_available():
        raise InputError("this lmxray has no explanation verification (Attribution.verify); "
                         "update lmxray or run without verify")
    job.step(f"{a.method}: verifying")
    got = a.verify(model)  # type: ignore[attr-defined]
    return to_jsonable(got.to_dict() if hasattr(got, "to_dict") else got)


# ---------------------------------------------------------------------------- inside
def parse_lens(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"prompt": text(body, "prompt", ctx.limits.prompt_chars),
            "target": optional_text(body, "target", 100),
            "top_k": integer(body, "top_k", 5, 1, 10),
            "tuned": flag(body, "tuned")}


def run_lens(job: Job, model: Model, args: dict[str, Any], models: Models, name: str) -> Output:
    lens = None
    if args["tuned"]:
        lens = models.lenses.get(name)
        if lens is None:
            job.step(f"training a quick tuned lens ({TUNED_LENS['steps']} steps, once per model; cancel stops it)")
            lens = TunedLens.fit(model, zoo.corpus("train", n=100), progress=False, **TUNED_LENS)
            models.lenses[name] = lens
    job.step("reading the lens")
    r = logit_lens(model, args["prompt"], args["target"], top_k=args["top_k"], lens=lens)
    return Output({"kind": "lens", **to_jsonable(r.to_dict())}, [r])


def parse_trace(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    prompt = text(body, "prompt", ctx.limits.prompt_chars)
    start, end = body.get("start"), body.get("end")
    if start is None and end is None:
        subject: Any = body.get("subject")
        if not isinstance(subject, str) or not subject:
            raise InputError("no subject: select the subject's text in the prompt (or send subject, or start and end)")
        if subject not in prompt:
            raise InputError(f"subject {subject[:80]!r} does not occur in the prompt; select it in the prompt")
    else:
        s = integer(body, "start", 0, 0, len(prompt) - 1)
        e = integer(body, "end", 0, s + 1, len(prompt))
        subject = (s, e)
    return {"prompt": prompt, "subject": subject, "answer": optional_text(body, "answer", 100),
            "n_samples": integer(body, "n_samples", 3, 1, ctx.limits.samples),
            "kinds": choices(body, "kinds", TRACE_KINDS, len(TRACE_KINDS), ["resid_post"])}


def run_trace(job: Job, model: Model, args: dict[str, Any]) -> Output:
    subject = args["subject"]
    if isinstance(subject, tuple):
        subject = spans_to_tokens(model, args["prompt"], [subject])
    job.step("causal tracing")
    r = causal_trace(model, args["prompt"], subject, args["answer"], kinds=args["kinds"],
                     n_samples=args["n_samples"])
    return Output({"kind": "trace", **to_jsonable(r.to_dict())}, [r])


def parse_patch(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    lim = ctx.limits.prompt_chars
    return {"clean": text(body, "clean", lim), "corrupt": text(body, "corrupt", lim),
            "answer": optional_text(body, "answer", 100), "foil": optional_text(body, "foil", 100),
            "site": choice(body, "site", PATCH_SITES, "resid_pre")}


def run_patch(job: Job, model: Model, args: dict[str, Any]) -> Output:
    job.step("activation patching")
    r = activation_patching(model, args["clean"], args["corrupt"], args["answer"], args["foil"],
                            sites=(args["site"],))
    return Output({"kind": "patch", **to_jsonable(r.to_dict())}, [r])


def parse_heads(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"n_seqs": integer(body, "n_seqs", 8, 1, 32), "seq_len": integer(body, "seq_len", 20, 4, 64),
            "seed": integer(body, "seed", 0, 0, 2**31 - 1)}


def run_heads(job: Job, model: Model, args: dict[str, Any]) -> Output:
    job.step("scoring heads on repeated random tokens")
    r = head_scores(model, n_seqs=args["n_seqs"], seq_len=args["seq_len"], seed=args["seed"])
    return Output({"kind": "heads", **to_jsonable(r.to_dict())}, [r])


# ---------------------------------------------------------------------------- judge
def parse_upload_text(data: str, limits: Limits, what: str) -> list[dict[str, Any]]:
    """Rows of an uploaded JSONL text (size-checked), parsed by the library's JSONL reader
    (line-numbered errors)."""
    size = len(data.encode("utf-8"))
    if size > limits.upload_bytes:
        raise InputError(f"the upload has {size} bytes, over the limit of {limits.upload_bytes}; "
                         f"upload fewer {what}")
    return parse_jsonl(data, source="the uploaded JSONL", what=what)


def parse_upload(data: str, limits: Limits) -> list[dict[str, Any]]:
    """Leaderboard examples of an uploaded JSONL text: ``prompt`` and ``target`` strings."""
    rows = parse_upload_text(data, limits, "examples")
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
            raise InputError(f"uploaded JSONL line {i}: each example needs string fields prompt and target")
    return rows


def parse_judge(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    lim = ctx.limits
    upload = body.get("jsonl")
    if upload is not None:
        if not isinstance(upload, str):
            raise InputError("jsonl must be the uploaded file's text")
        source: Any = parse_upload(upload, lim)
        name = str(body.get("name") or "upload")[:60]
    else:
        source = name = choice(body, "task", zoo.TASKS, "facts")
    chosen = choices(body, "methods", sorted(methods()), len(methods()), ["saliency", "occlusion", "random"])
    return {"source": source, "name": name, "n": integer(body, "n", 8, 1, lim.examples),
            "methods": chosen, "n_steps": integer(body, STEP_PARAM, 16, 1, lim.steps)}


def run_judge(job: Job, model: Model, args: dict[str, Any]) -> Output:
    job.step("reading the examples")
    source = args["source"]
    n = args["n"] if isinstance(source, str) else min(args["n"], len(source))
    exs, _ = load_examples(model, source, n=n)
    params = {"integrated_gradients": {"n_steps": args["n_steps"]}}
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for start in range(0, len(exs), JUDGE_BATCH):
        job.step(f"judging examples {start + 1}-{min(start + JUDGE_BATCH, len(exs))} of {len(exs)}",
                 start, len(exs))
        ev = evaluate(model, exs[start:start + JUDGE_BATCH], methods=args["methods"], method_params=params,
                      progress=False, name=args["name"], n_steps=min(args["n_steps"], 20))
        rows += ev.rows
        config = dict(ev.config)
    config["examples"] = [e.id for e in exs]
    full = Evaluation(rows=rows, sanity=[], config=config)
    job.step("done", len(exs), len(exs))
    board = full.leaderboard().reset_index()
    curves = {m: c for m, c in full.curves("deletion").items()}
    payload = {"kind": "judge", "data": args["name"], "n_examples": len(exs),
               "columns": ["method", *full.display_columns()],
               "leaderboard": to_jsonable(board.to_dict("records")), "curves": to_jsonable(curves),
               "metrics": _directions(full.display_columns())}
    return Output(payload, [full])


def _directions(columns: list[str]) -> dict[str, dict[str, Any]]:
    return {c: {"higher_is_better": METRIC_INFO[c][0], "about": METRIC_INFO[c][1]} for c in columns}


# ---------------------------------------------------------------------------- registry
Parse = Callable[[dict[str, Any], Context], dict[str, Any]]


def runner(kind: str, models: Models, name: str) -> Callable[[Job, Model, dict[str, Any]], Output]:
    if kind == "lens":
        return lambda job, model, args: run_lens(job, model, args, models, name)
    return KINDS[kind][1]  # type: ignore[return-value]


KINDS: dict[str, tuple[Parse, Any]] = {
    "explain": (parse_explain, run_explain),
    "lens": (parse_lens, None),
    "trace": (parse_trace, run_trace),
    "patch": (parse_patch, run_patch),
    "heads": (parse_heads, run_heads),
    "judge": (parse_judge, run_judge),
}

