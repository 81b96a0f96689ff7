"""Bad input for ``lmxray lens`` / ``lens-train`` / ``trace`` / ``heads`` / ``probe`` and the
``lmxray.internals`` API: each case is one clean line (exit 2 through the CLI, an LmxrayError
through the API), with nothing written."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from badinput import ApiCase, CliCase, embedded_model, run_api_case, run_cli_case
from lmxray.errors import FormatError, InputError

P = "The capital of France is"


def _write(name: str, data: bytes | str):
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")

    return setup


def _other_safetensors(tmp: Path) -> None:
    from lmxray.io import save_tensors

    save_tensors(tmp / "other.safetensors", {"x": torch.zeros(2)}, format="lmxray.steering/1")


def _corpus_lines(n: int) -> str:
    return "\n".join(f"The capital of country {i} is city {i}." for i in range(n)) + "\n"


_NOTES = '{"my": "own notes"}\n'

CLI_CASES: list[CliCase] = [
    # lens
    CliCase("lens-empty-prompt", ["lens", "", "--json", "{tmp}/l.json"], "the prompt is empty", ["{tmp}/l.json"]),
    CliCase("lens-blank-prompt", ["lens", "   "], "the prompt is empty"),
    CliCase("lens-multi-token-target", ["lens", P, "--target", " Paris is nice", "--json", "{tmp}/l.json",
                                        "--html", "{tmp}/l.html"], "is 4 tokens", ["{tmp}/l.json", "{tmp}/l.html"]),
    CliCase("lens-empty-target", ["lens", P, "--target", ""], "the target is empty"),
    CliCase("lens-top-k-zero", ["lens", P, "--top-k", "0"], "--top-k"),
    CliCase("lens-top-k-negative", ["lens", P, "--top-k", "-3"], "--top-k"),
    CliCase("lens-position-out-of-range", ["lens", P, "--position", "40", "--png", "{tmp}/l.png"],
            "--position 40 is outside", ["{tmp}/l.png"]),
    CliCase("lens-tuned-missing", ["lens", P, "--tuned", "{tmp}/none.safetensors"], "no tuned lens file"),
    CliCase("lens-tuned-junk", ["lens", P, "--tuned", "{tmp}/junk.safetensors"], "cannot read",
            setup=_write("junk.safetensors", b"not a safetensors file")),
    CliCase("lens-tuned-other-format", ["lens", P, "--tuned", "{tmp}/other.safetensors"], "tuned-lens",
            setup=_other_safetensors),
    CliCase("lens-json-is-a-folder", ["lens", P, "--json", "{tmp}"], "directory"),
    CliCase("lens-png-no-such-folder", ["lens", P, "--png", "{tmp}/no/l.png"], "does not exist", ["{tmp}/no/l.png"]),
    CliCase("lens-same-output-twice", ["lens", P, "--json", "{tmp}/x", "--html", "{tmp}/x"], "same file",
            ["{tmp}/x"]),
    # lens-train
    CliCase("lens-train-corpus-not-utf8", ["lens-train", "{tmp}/l.safetensors", "--corpus", "{tmp}/c.txt"],
            "not UTF-8", ["{tmp}/l.safetensors"], setup=_write("c.txt", _corpus_lines(20).encode() + b"\xff\xfe caf\xe9\n")),
    CliCase("lens-train-corpus-missing", ["lens-train", "{tmp}/l.safetensors", "--corpus", "{tmp}/none.txt"],
            "no corpus file", ["{tmp}/l.safetensors"]),
    CliCase("lens-train-corpus-is-a-folder", ["lens-train", "{tmp}/l.safetensors", "--corpus", "{tmp}"],
            "is a folder", ["{tmp}/l.safetensors"]),
    CliCase("lens-train-corpus-too-short", ["lens-train", "{tmp}/l.safetensors", "--corpus", "{tmp}/c.txt"],
            "give at least 10", ["{tmp}/l.safetensors"], setup=_write("c.txt", _corpus_lines(3))),
    CliCase("lens-train-corpus-and-zoo", ["lens-train", "{tmp}/l.safetensors", "--corpus", "{tmp}/c.txt",
                                          "--zoo", "facts"], "not both", ["{tmp}/l.safetensors"],
            setup=_write("c.txt", _corpus_lines(20))),
    CliCase("lens-train-unknown-zoo-task", ["lens-train", "{tmp}/l.safetensors", "--zoo", "nope"],
            "unknown zoo task", ["{tmp}/l.safetensors"]),
    CliCase("lens-train-steps-zero", ["lens-train", "{tmp}/l.safetensors", "--steps", "0"], "--steps"),
    CliCase("lens-train-held-out-too-big", ["lens-train", "{tmp}/l.safetensors", "--held-out", "0.99"],
            "--held-out"),
    CliCase("lens-train-negative-lr", ["lens-train", "{tmp}/l.safetensors", "--lr", "-1"], "--lr"),
    CliCase("lens-train-out-is-a-folder", ["lens-train", "{tmp}"], "directory"),
    CliCase("lens-train-out-no-such-folder", ["lens-train", "{tmp}/no/l.safetensors"], "does not exist"),
    # trace
    CliCase("trace-no-mode", ["trace", P], "give exactly one of"),
    CliCase("trace-two-modes", ["trace", P, "--subject", "France", "--corrupt", "x"], "give exactly one of"),
    CliCase("trace-no-prompt", ["trace", "--subject", "France"], "missing PROMPT"),
    CliCase("trace-zoo-facts-with-prompt", ["trace", P, "--zoo-facts", "2"], "drop the PROMPT"),
    CliCase("trace-checkpoint-without-zoo-facts", ["trace", P, "--subject", "France", "--checkpoint",
                                                   "{tmp}/ck.jsonl"], "--checkpoint applies", ["{tmp}/ck.jsonl"]),
    CliCase("trace-checkpoint-unrelated-file", ["trace", "--zoo-facts", "2", "--checkpoint", "{tmp}/notes.jsonl",
                                                "--json", "{tmp}/s.json"], "not a trace checkpoint",
            ["{tmp}/s.json"], setup=_write("notes.jsonl", _NOTES)),
    CliCase("trace-checkpoint-not-utf8", ["trace", "--zoo-facts", "2", "--checkpoint", "{tmp}/ck.jsonl"],
            "not a trace checkpoint", setup=_write("ck.jsonl", b"\xff\xfe\x00")),
    CliCase("trace-checkpoint-is-a-folder", ["trace", "--zoo-facts", "2", "--checkpoint", "{tmp}"], "directory"),
    CliCase("trace-zoo-facts-too-many", ["trace", "--zoo-facts", "100000", "--json", "{tmp}/s.json"],
            "the zoo has 2490 facts", ["{tmp}/s.json"]),
    CliCase("trace-zoo-facts-zero", ["trace", "--zoo-facts", "0"], "--zoo-facts"),
    CliCase("trace-empty-prompt", ["trace", "", "--subject", "France"], "the prompt is empty"),
    CliCase("trace-subject-not-in-prompt", ["trace", P, "--subject", "Spain", "--json", "{tmp}/t.json"],
            "does not occur", ["{tmp}/t.json"]),
    CliCase("trace-window-zero", ["trace", P, "--subject", "France", "--window", "0"], "--window"),
    CliCase("trace-samples-zero", ["trace", P, "--subject", "France", "--samples", "0"], "--samples"),
    CliCase("trace-noise-negative", ["trace", P, "--subject", "France", "--noise", "-1"], "--noise"),
    CliCase("trace-corrupt-other-length", ["trace", P, "--corrupt", "The capital of the United Kingdom is",
                                           "--html", "{tmp}/p.html"], "same number of tokens", ["{tmp}/p.html"]),
    CliCase("trace-unknown-site", ["trace", P, "--corrupt", "The capital of Italy is", "--sites", "bogus"],
            "cannot patch 'bogus'"),
    CliCase("trace-no-sites", ["trace", P, "--corrupt", "The capital of Italy is", "--sites", ","],
            "no site kinds"),
    CliCase("trace-bad-positions", ["trace", P, "--corrupt", "The capital of Italy is", "--positions", "some"],
            "positions must be"),
    CliCase("trace-unknown-metric", ["trace", P, "--corrupt", "The capital of Italy is", "--metric", "nope"],
            "unknown metric"),
    CliCase("trace-attribution-without-corrupt", ["trace", P, "--subject", "France", "--attribution"],
            "--attribution and --foil"),
    # heads
    CliCase("heads-empty-prompt", ["heads", "", "--json", "{tmp}/h.json"], "prompt 0 is empty", ["{tmp}/h.json"]),
    CliCase("heads-second-prompt-blank", ["heads", "The cat sat on the mat", "  "], "prompt 1 is empty"),
    CliCase("heads-unknown-kind", ["heads", "--kind", "nope"], "--kind must be one of"),
    CliCase("heads-n-seqs-zero", ["heads", "--n-seqs", "0"], "--n-seqs"),
    CliCase("heads-seq-len-one", ["heads", "--seq-len", "1"], "--seq-len"),
    CliCase("heads-top-zero", ["heads", "--top", "0"], "--top"),
    CliCase("heads-unknown-zoo-task", ["heads", "--n-seqs", "2", "--seq-len", "4", "--ablate-zoo", "nope"],
            "unknown zoo task"),
    # probe
    CliCase("probe-n-above-the-zoo", ["probe", "capital", "--n", "100000", "--json", "{tmp}/p.json"],
            "use --n 558 or less", ["{tmp}/p.json"]),
    CliCase("probe-n-too-small", ["probe", "capital", "--n", "5"], "--n"),
    CliCase("probe-cv-one", ["probe", "capital", "--cv", "1"], "--cv"),
    CliCase("probe-unknown-relation", ["probe", "nope"], "no facts of relation 'nope'"),
    CliCase("probe-empty-relation", ["probe", ""], "the relation is empty"),
    CliCase("probe-unknown-label", ["probe", "capital", "--label", "nope"], "carry a 'nope' label"),
]


@functools.cache
def _tiny():
    return embedded_model()


def _lens_for_another_model(tmp: Path):
    from lmxray.internals import TunedLens, logit_lens

    return logit_lens(_tiny(), P, lens=TunedLens(2, 8))


def _trace_facts(tmp: Path, checkpoint: str, **kw):
    from lmxray.internals import trace_facts

    return trace_facts(_tiny(), [(P, "France", " Paris")], n_samples=2, progress=False,
                       checkpoint=tmp / checkpoint, **kw)


def _checkpoint_of_another_run(tmp: Path):
    from lmxray.internals import trace_facts

    # one short fact, one site kind: the cheapest real checkpoint; the rerun differs in its window only
    facts = [("France is", "France", " Paris")]
    kw = dict(kinds=["resid_post"], n_samples=2, progress=False, checkpoint=tmp / "ck.jsonl", only_known=False)
    trace_facts(_tiny(), facts, window=2, **kw)
    return trace_facts(_tiny(), facts, window=3, **kw)


def _api(name: str):
    import lmxray.internals as internals

    return getattr(internals, name)


def _probe(prompts, labels, **kw):
    return _api("probe")(_tiny(), prompts, labels, **kw)


API_CASES: list[ApiCase] = [
    # lens
    ApiCase("logit-lens-empty-prompt", lambda tmp: _api("logit_lens")(_tiny(), ""), "the prompt is empty"),
    ApiCase("logit-lens-no-ids", lambda tmp: _api("logit_lens")(_tiny(), []), "no prompt"),
    ApiCase("logit-lens-multi-token-target", lambda tmp: _api("logit_lens")(_tiny(), P, " Paris is nice"),
            "is 4 tokens", InputError),
    ApiCase("logit-lens-empty-target", lambda tmp: _api("logit_lens")(_tiny(), P, ""), "the target is empty"),
    ApiCase("logit-lens-target-id-outside-vocab", lambda tmp: _api("logit_lens")(_tiny(), P, 10**9),
            "outside the vocabulary"),
    ApiCase("logit-lens-top-k-zero", lambda tmp: _api("logit_lens")(_tiny(), P, top_k=0), "top_k"),
    ApiCase("logit-lens-lens-of-another-model", _lens_for_another_model, "this tuned lens is for"),
    ApiCase("tuned-lens-load-missing", lambda tmp: _api("TunedLens").load(tmp / "none.safetensors"),
            "no tuned lens file", InputError),
    ApiCase("tuned-lens-load-folder", lambda tmp: _api("TunedLens").load(tmp), "is a folder", InputError),
    ApiCase("tuned-lens-load-junk", lambda tmp: (_write("j.safetensors", b"junk")(tmp),
                                                 _api("TunedLens").load(tmp / "j.safetensors")),
            "cannot read", FormatError),
    ApiCase("tuned-lens-fit-no-text", lambda tmp: _api("TunedLens").fit(_tiny(), [], progress=False),
            "no training text"),
    ApiCase("tuned-lens-fit-zero-steps", lambda tmp: _api("TunedLens").fit(_tiny(), ["a b c"], steps=0,
                                                                           progress=False), "at least 1"),
    ApiCase("tuned-lens-save-to-missing-folder",
            lambda tmp: _api("TunedLens")(4, 128).save(tmp / "no" / "l.safetensors"), "does not exist",
            outputs=["{tmp}/no/l.safetensors"]),
    ApiCase("lens-result-load-not-utf8", lambda tmp: (_write("l.json", b"\xff\xfe")(tmp),
                                                      _api("LensResult").load(tmp / "l.json")), "not UTF-8"),
    ApiCase("patching-result-load-attribution-file",
            lambda tmp: (_write("a.json", '{"format": "lmxray.attribution/1"}')(tmp),
                         _api("PatchingResult").load(tmp / "a.json")), "not an lmxray", FormatError),
    # heads
    ApiCase("head-scores-empty-prompt", lambda tmp: _api("head_scores")(_tiny(), [""]), "prompt 0 is empty"),
    ApiCase("head-scores-no-prompts", lambda tmp: _api("head_scores")(_tiny(), []), "no inputs"),
    ApiCase("head-scores-one-token", lambda tmp: _api("head_scores")(_tiny(), [[5]]), "at least two"),
    ApiCase("head-scores-n-seqs-zero", lambda tmp: _api("head_scores")(_tiny(), n_seqs=0), "n_seqs"),
    ApiCase("head-scores-batch-size-zero", lambda tmp: _api("head_scores")(_tiny(), batch_size=0), "batch_size"),
    ApiCase("ablate-heads-layer-out-of-range",
            lambda tmp: _api("ablate_heads")(_tiny(), [(9, 0)], [P], [" Paris"]), "out of range"),
    ApiCase("ablate-heads-negative-head",
            lambda tmp: _api("ablate_heads")(_tiny(), [(0, -1)], [P], [" Paris"]), "out of range"),
    ApiCase("ablate-heads-unknown-how",
            lambda tmp: _api("ablate_heads")(_tiny(), [(0, 0)], [P], [" Paris"], how="resample"), "'zero' or 'mean'"),
    ApiCase("random-heads-too-many",
            lambda tmp: _api("random_heads_control")(_tiny(), 99, [P], [" Paris"]), "k must be in"),
    ApiCase("task-metric-mismatched", lambda tmp: _api("task_metric")(_tiny(), [P, P], [" Paris"]),
            "as many targets"),
    # tracing
    ApiCase("causal-trace-empty-prompt", lambda tmp: _api("causal_trace")(_tiny(), "", "x"), "the prompt is empty"),
    ApiCase("causal-trace-subject-absent", lambda tmp: _api("causal_trace")(_tiny(), P, "Spain"), "does not occur"),
    ApiCase("causal-trace-window-zero", lambda tmp: _api("causal_trace")(_tiny(), P, "France", window=0), "window"),
    ApiCase("causal-trace-samples-zero", lambda tmp: _api("causal_trace")(_tiny(), P, "France", n_samples=0),
            "n_samples"),
    ApiCase("causal-trace-negative-noise", lambda tmp: _api("causal_trace")(_tiny(), P, "France", noise=-1.0),
            "noise"),
    ApiCase("causal-trace-head-site", lambda tmp: _api("causal_trace")(_tiny(), P, "France",
                                                                       kinds=["attn.head_out"]), "cannot trace"),
    ApiCase("causal-trace-subject-positions-out-of-range",
            lambda tmp: _api("causal_trace")(_tiny(), P, [40, 41]), "do not fit"),
    ApiCase("causal-trace-batch-size-zero", lambda tmp: _api("causal_trace")(_tiny(), P, "France", n_samples=2,
                                                                             batch_size=0), "batch size"),
    ApiCase("trace-facts-none", lambda tmp: _api("trace_facts")(_tiny(), [], progress=False), "no facts"),
    ApiCase("trace-facts-checkpoint-unrelated",
            lambda tmp: (_write("notes.jsonl", _NOTES)(tmp), _trace_facts(tmp, "notes.jsonl")),
            "not a trace checkpoint"),
    ApiCase("trace-facts-checkpoint-of-another-run", _checkpoint_of_another_run, "another run (options.window"),
    ApiCase("trace-facts-fact-without-subject",
            lambda tmp: _api("trace_facts")(_tiny(), [{"prompt": P, "answer": " Paris"}], progress=False),
            "each fact needs"),
    # patching
    ApiCase("patching-other-length",
            lambda tmp: _api("activation_patching")(_tiny(), P, "The capital of the United Kingdom is"),
            "same number of tokens"),
    ApiCase("patching-no-sites",
            lambda tmp: _api("activation_patching")(_tiny(), P, "The capital of Italy is", sites=[]), "no site kinds"),
    ApiCase("patching-bad-positions",
            lambda tmp: _api("activation_patching")(_tiny(), P, "The capital of Italy is", positions="x"),
            "positions must be"),
    ApiCase("patching-unknown-metric",
            lambda tmp: _api("activation_patching")(_tiny(), P, "The capital of Italy is", metric="nope"),
            "unknown metric"),
    ApiCase("patching-batch-size-zero",
            lambda tmp: _api("activation_patching")(_tiny(), P, "The capital of Italy is", batch_size=0),
            "batch size"),
    ApiCase("patching-same-prompts",
            lambda tmp: _api("activation_patching")(_tiny(), P, P, " Paris", " Rome"), "same metric value"),
    ApiCase("head-means-batch-size-zero", lambda tmp: _api("head_means")(_tiny(), [P], batch_size=0), "batch_size"),
    ApiCase("task-metric-batch-size-zero", lambda tmp: _api("task_metric")(_tiny(), [P], [" Paris"], batch_size=0),
            "batch_size"),
    ApiCase("lens-kl-batch-size-zero", lambda tmp: _api("lens_kl")(_tiny(), [P], batch_size=0), "batch_size"),
    # probes
    ApiCase("probe-api-batch-size-zero", lambda tmp: _probe([P] * 4, ["a", "b"] * 2, cv=2, batch_size=0), "batch_size"),
    ApiCase("probe-api-one-class", lambda tmp: _probe([P] * 4, ["a"] * 4), "single class"),
    ApiCase("probe-api-mismatched-labels", lambda tmp: _probe([P] * 4, ["a", "b"]), "one label per prompt"),
    ApiCase("probe-api-cv-one", lambda tmp: _probe([P] * 4, ["a", "b"] * 2, cv=1), "cv must be in"),
    ApiCase("probe-api-unknown-site", lambda tmp: _probe([P] * 4, ["a", "b"] * 2, cv=2, site="attn.pattern"),
            "cannot probe"),
    ApiCase("probe-api-position-out-of-range", lambda tmp: _probe([P] * 4, ["a", "b"] * 2, cv=2, position=40),
            "is outside prompt"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)


def test_refused_checkpoint_is_left_as_it_was(tmp_path):
    """The unrelated file of the CLI case above is not appended to (nothing half-written)."""
    from badinput import run_cli_case as run

    case = next(c for c in CLI_CASES if c.id == "trace-checkpoint-unrelated-file")
    run(case, tmp_path)
    assert (tmp_path / "notes.jsonl").read_text(encoding="utf-8") == _NOTES


def test_failed_trace_leaves_no_header_only_checkpoint(tmp_path):
    """A run that fails before tracing any fact writes no checkpoint at all."""
    from lmxray.internals import trace_facts

    with pytest.raises(InputError):
        trace_facts(_tiny(), [(P, "Spain", " Paris")], checkpoint=tmp_path / "ck.jsonl", progress=False)
    assert not (tmp_path / "ck.jsonl").exists()
