"""Bad input for ``lmxray shortcuts | finetune | steer | edit | amplify`` and the improve API:
every case fails with one clear line (exit 2 on the CLI), nothing written."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from lmxray.errors import FormatError, InputError

GOOD = '{"prompt": "Review: a fine film. Sentiment:", "target": " positive"}\n'


def _write(name: str, data: bytes | str):
    def setup(tmp):
        p = tmp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))

    return setup


def _files(*pairs):
    def setup(tmp):
        for name, data in pairs:
            _write(name, data)(tmp)

    return setup


NON_UTF8 = _write("bad.jsonl", GOOD.encode() + b'{"prompt": "caf\xe9", "target": " x"}\n')
NOT_JSON = _write("bad.jsonl", GOOD + "not json\n")
NOT_OBJECT = _write("bad.jsonl", GOOD + "[1, 2]\n")
EMPTY = _write("empty.jsonl", "\n\n")
NO_PROMPT = _write("np.jsonl", '{"text": "x"}\n{"text": "y"}\n')
NO_MARKS = _write("plain.jsonl", GOOD * 3)
EMPTY_TARGET = _write("et.jsonl", '{"prompt": "The fox", "target": ""}\n')
ABSENT_WORD = _write("aw.jsonl", GOOD + '{"prompt": "The fox", "target": " x", '
                     '"rationale": ["cat"]}\n')
A_FILE = _write("afile", "x")
BATCH = '{"prompt": "The capital of France is", "subject": "France", "target": " Rome"}\n'

CLI_CASES: list[CliCase] = [
    # ---------------------------------------------------------------- shortcuts
    CliCase("shortcuts-non-utf8", ["shortcuts", "{tmp}/bad.jsonl", "--json", "{tmp}/o.json"],
            "line 2 is not UTF-8", outputs=["{tmp}/o.json"], setup=NON_UTF8),
    CliCase("shortcuts-not-json", ["shortcuts", "{tmp}/bad.jsonl"], "line 2 is not JSON",
            setup=NOT_JSON),
    CliCase("shortcuts-not-object", ["shortcuts", "{tmp}/bad.jsonl"],
            "line 2 is not a JSON object", setup=NOT_OBJECT),
    CliCase("shortcuts-no-file", ["shortcuts", "{tmp}/missing.jsonl"], "no JSONL dataset file"),
    CliCase("shortcuts-empty-file", ["shortcuts", "{tmp}/empty.jsonl"], "holds no", setup=EMPTY),
    CliCase("shortcuts-data-is-folder", ["shortcuts", "{tmp}"], "is a directory"),
    CliCase("shortcuts-unknown-method", ["shortcuts", "--method", "nope"], "unknown method"),
    CliCase("shortcuts-other-task", ["shortcuts", "--task", "facts"], "--task sentiment"),
    CliCase("shortcuts-bad-split", ["shortcuts", "--split", "nope", "--no-progress"],
            "no split 'nope'"),
    CliCase("shortcuts-n-1", ["shortcuts", "--n", "1"], "--n"),
    CliCase("shortcuts-min-count-0", ["shortcuts", "--min-count", "0"], "--min-count"),
    CliCase("shortcuts-top-0", ["shortcuts", "--top", "0"], "--top"),
    CliCase("shortcuts-json-is-folder", ["shortcuts", "--json", "{tmp}"], "is a directory"),
    CliCase("shortcuts-png-no-folder", ["shortcuts", "--png", "{tmp}/no/s.png"],
            "does not exist", outputs=["{tmp}/no/s.png"]),
    CliCase("shortcuts-same-output", ["shortcuts", "--json", "{tmp}/a", "--png", "{tmp}/a"],
            "same file", outputs=["{tmp}/a"]),
    CliCase("shortcuts-rows-without-prompt", ["shortcuts", "{tmp}/np.jsonl", "--no-progress"],
            "needs a 'prompt'", setup=NO_PROMPT),
    CliCase("shortcuts-rationale-word-absent", ["shortcuts", "{tmp}/aw.jsonl", "--no-progress"],
            "does not occur", setup=ABSENT_WORD),
    # ---------------------------------------------------------------- finetune
    CliCase("finetune-non-utf8", ["finetune", "{tmp}/bad.jsonl", "--out", "{tmp}/run"],
            "line 2 is not UTF-8", outputs=["{tmp}/run"], setup=NON_UTF8),
    CliCase("finetune-not-json", ["finetune", "{tmp}/bad.jsonl", "--out", "{tmp}/run"],
            "line 2 is not JSON", outputs=["{tmp}/run"], setup=NOT_JSON),
    CliCase("finetune-no-file", ["finetune", "{tmp}/missing.jsonl", "--out", "{tmp}/run"],
            "no JSONL dataset file", outputs=["{tmp}/run"]),
    CliCase("finetune-data-without-out", ["finetune", "{tmp}/plain.jsonl"], "needs --out",
            setup=NO_MARKS),
    CliCase("finetune-out-is-file", ["finetune", "{tmp}/plain.jsonl", "--out", "{tmp}/afile"],
            "is a file", setup=_files(("plain.jsonl", GOOD), ("afile", "x"))),
    CliCase("finetune-out-parent-missing", ["finetune", "--out", "{tmp}/no/run"],
            "does not exist", outputs=["{tmp}/no"]),
    CliCase("finetune-bad-attribution", ["finetune", "--attribution", "shap"],
            "attribution must be one of"),
    CliCase("finetune-steps-0", ["finetune", "--steps", "0"], "--steps"),
    CliCase("finetune-lam-negative", ["finetune", "--lam", "-1"], "--lam"),
    CliCase("finetune-batch-size-0", ["finetune", "--batch-size", "0"], "--batch-size"),
    CliCase("finetune-detect-with-data",
            ["finetune", "{tmp}/plain.jsonl", "--out", "{tmp}/run", "--penalise", "detect"],
            "--penalise detect works on the zoo task", outputs=["{tmp}/run"], setup=NO_MARKS),
    CliCase("finetune-unknown-annotation", ["finetune", "--annotation", "nope"],
            "annotation must be one of"),
    CliCase("finetune-none-on-zoo", ["finetune", "--penalise", "none"], "plain fine-tune"),
    CliCase("finetune-no-marked-tokens",
            ["finetune", "{tmp}/plain.jsonl", "--out", "{tmp}/run", "--no-progress"],
            "no example has tokens marked", outputs=["{tmp}/run"], setup=NO_MARKS),
    CliCase("finetune-empty-target",
            ["finetune", "{tmp}/et.jsonl", "--out", "{tmp}/run", "--no-progress"],
            "empty target", outputs=["{tmp}/run"], setup=EMPTY_TARGET),
    # ---------------------------------------------------------------- steer
    CliCase("steer-layer-99", ["steer", "--layers", "99", "--no-progress"],
            "layer 99 is out of range"),
    CliCase("steer-layer-minus-99", ["steer", "--layers", "1,-99", "--no-progress"],
            "layer -99 is out of range"),
    CliCase("steer-layers-only-commas", ["steer", "--layers", ",", "--no-progress"],
            "no layers given"),
    CliCase("steer-layers-not-ints", ["steer", "--layers", "a,b"], "comma list of integers"),
    CliCase("steer-empty-prompt", ["steer", ""], "PROMPT is empty"),
    CliCase("steer-blank-prompt", ["steer", "   "], "PROMPT is empty"),
    CliCase("steer-coefs-not-numbers", ["steer", "--coefs", "x"], "comma list of numbers"),
    CliCase("steer-coefs-empty", ["steer", "--coefs", ","], "--coefs is empty"),
    CliCase("steer-to-neutral", ["steer", "--to", "neutral", "--no-progress"], "steer towards"),
    CliCase("steer-bad-site", ["steer", "--site", "mlp.out", "--layers", "0", "--no-progress"],
            "resid_pre"),
    CliCase("steer-save-is-folder", ["steer", "--save", "{tmp}"], "is a directory"),
    CliCase("steer-png-no-folder", ["steer", "--png", "{tmp}/no/s.png"], "does not exist",
            outputs=["{tmp}/no/s.png"]),
    CliCase("steer-n-vector-2", ["steer", "--n-vector", "2"], "--n-vector"),
    # ---------------------------------------------------------------- edit
    CliCase("edit-nothing", ["edit"], "give a PROMPT"),
    CliCase("edit-prompt-and-facts", ["edit", "The capital of France is", "--facts", "2"],
            "give a PROMPT"),
    CliCase("edit-facts-100000", ["edit", "--facts", "100000", "--no-progress"],
            "known facts"),
    CliCase("edit-facts-0", ["edit", "--facts", "0"], "--facts"),
    CliCase("edit-facts-layer-99", ["edit", "--facts", "2", "--layer", "99", "--no-progress"],
            "layer 99 is out of range"),
    CliCase("edit-no-target", ["edit", "The capital of France is", "--subject", "France"],
            "--target"),
    CliCase("edit-blank-target", ["edit", "The capital of France is", "--subject", "France",
                                  "--target", " "], "--target"),
    CliCase("edit-subject-absent", ["edit", "The capital of France is", "--subject", "Spain",
                                    "--target", " Rome"], "does not occur"),
    CliCase("edit-empty-prompt", ["edit", "", "--subject", "x", "--target", " y"],
            "PROMPT is empty"),
    CliCase("edit-layer-99", ["edit", "The capital of France is", "--subject", "France",
                              "--target", " Rome", "--layer", "99"], "out of range"),
    CliCase("edit-out-is-file", ["edit", "The capital of France is", "--subject", "France",
                                 "--target", " Rome", "--out", "{tmp}/afile"], "is a file",
            setup=A_FILE),
    CliCase("edit-json-no-folder", ["edit", "--facts", "2", "--json", "{tmp}/no/e.json"],
            "does not exist", outputs=["{tmp}/no/e.json"]),
    CliCase("edit-bad-method", ["edit", "--facts", "2", "--method", "nope"], "rome or memit"),
    CliCase("edit-batch-needs-memit", ["edit", "--batch", "{tmp}/b.jsonl"], "--method memit",
            setup=_write("b.jsonl", BATCH)),
    CliCase("edit-batch-and-facts", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl",
                                     "--facts", "2"], "only one", setup=_write("b.jsonl", BATCH)),
    CliCase("edit-batch-missing", ["edit", "--method", "memit", "--batch", "{tmp}/no.jsonl"],
            "no edit batch file"),
    CliCase("edit-batch-folder", ["edit", "--method", "memit", "--batch", "{tmp}"],
            "is a directory"),
    CliCase("edit-batch-non-utf8", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl"],
            "line 2 is not UTF-8", setup=_write("b.jsonl", BATCH.encode() + b'{"p": "\xe9"}\n')),
    CliCase("edit-batch-not-json", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl"],
            "line 2 is not JSON", setup=_write("b.jsonl", BATCH + "nope\n")),
    CliCase("edit-batch-empty", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl"],
            "holds no", setup=_write("b.jsonl", "\n")),
    CliCase("edit-batch-subject-absent",
            ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl", "--json", "{tmp}/o.json"],
            "line 2: the subject 'Spain' does not occur", outputs=["{tmp}/o.json"],
            setup=_write("b.jsonl", BATCH + '{"prompt": "The capital of Italy is", '
                         '"subject": "Spain", "target": " Paris"}\n')),
    CliCase("edit-batch-no-target", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl"],
            "line 1: an edit request", setup=_write("b.jsonl", '{"prompt": "a b", "subject": "a"}\n')),
    CliCase("edit-memit-layer-99", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl",
                                    "--layer", "99"], "out of range", setup=_write("b.jsonl", BATCH)),
    CliCase("edit-preserve-negative", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl",
                                       "--preserve-weight", "-1"], "must be a number >= 0",
            setup=_write("b.jsonl", BATCH)),
    CliCase("edit-preserve-nan", ["edit", "--method", "memit", "--facts", "2",
                                  "--preserve-weight", "nan"], "must be a number >= 0"),
    CliCase("edit-preserve-needs-memit", ["edit", "--facts", "2", "--preserve-weight", "5"],
            "use it with --method memit"),
    CliCase("edit-memit-out-is-file", ["edit", "--method", "memit", "--batch", "{tmp}/b.jsonl",
                                       "--out", "{tmp}/afile"], "is a file",
            setup=_files(("b.jsonl", BATCH), ("afile", "x"))),
    # ---------------------------------------------------------------- distill
    CliCase("distill-fraction-0", ["distill", "--fractions", "0,1"], "(0, 1]"),
    CliCase("distill-fraction-2", ["distill", "--fractions", "2"], "(0, 1]"),
    CliCase("distill-fraction-text", ["distill", "--fractions", "a,b"], "comma list of numbers"),
    CliCase("distill-fractions-empty", ["distill", "--fractions", ","], "is empty"),
    CliCase("distill-seeds-empty", ["distill", "--seeds", " "], "--seeds is empty"),
    CliCase("distill-seeds-text", ["distill", "--seeds", "x"], "comma list of integers"),
    CliCase("distill-n-train-5", ["distill", "--n-train", "5"], "--n-train"),
    CliCase("distill-steps-0", ["distill", "--steps", "0"], "--steps"),
    CliCase("distill-n-test-0", ["distill", "--n-test", "0"], "--n-test"),
    CliCase("distill-negative-weight", ["distill", "--rationale-weight", "-1"],
            "--rationale-weight"),
    CliCase("distill-unknown-rationale", ["distill", "--rationale", "nope"],
            "unknown --rationale 'nope'"),
    CliCase("distill-json-no-folder", ["distill", "--json", "{tmp}/no/d.json"],
            "does not exist", outputs=["{tmp}/no/d.json"]),
    # ---------------------------------------------------------------- amplify
    CliCase("amplify-bad-split", ["amplify", "nope"], "split must be"),
    CliCase("amplify-unknown-method", ["amplify", "--method", "nope"], "unknown method"),
    CliCase("amplify-shots-over-pool", ["amplify", "--shots", "12", "--n-pool", "10",
                                        "--no-progress"], "cannot come from a pool"),
    CliCase("amplify-shots-0", ["amplify", "--shots", "0"], "--shots"),
    CliCase("amplify-k-0", ["amplify", "--k", "0"], "--k"),
    CliCase("amplify-json-no-folder", ["amplify", "--json", "{tmp}/no/a.json"],
            "does not exist", outputs=["{tmp}/no/a.json"]),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    import lmxray

    return lmxray.load()


def _memit_one(**kw):
    """MEMIT with one fact at layer 0 of the tiny model, with ``kw`` as the options under test."""
    return _improve("memit").memit_edit(_tiny(), [("The capital of France is", "France", " Rome")],
                                        layers=[0], **kw)


def _eye(n: int):
    import torch

    return torch.eye(n, dtype=torch.float64)


def _improve(name: str):
    import importlib

    return importlib.import_module(f"lmxray.improve.{name}")


def _rows(n: int = 4):
    return [{"prompt": "Review: a fine film. Sentiment:", "target": " positive"}] * n


def _steer_vector_wrong_dims(tmp):
    from lmxray.improve.results import SteeringVector

    v = SteeringVector(vector=np.zeros(3, dtype=np.float32), layer=0)
    with _improve("steering").steer(_tiny(), v):
        pass


API_CASES: list[ApiCase] = [
    ApiCase("finetune-config-steps-0", lambda tmp: _improve("regularise").FinetuneConfig(steps=0),
            "steps", InputError),
    ApiCase("finetune-config-lam-negative",
            lambda tmp: _improve("regularise").FinetuneConfig(lam=-1.0), "lam", InputError),
    ApiCase("finetune-config-remove-baseline",
            lambda tmp: _improve("regularise").FinetuneConfig(baseline="remove"),
            "occlusion", InputError),
    ApiCase("finetune-no-examples",
            lambda tmp: _improve("regularise").finetune(_tiny(), [], progress=False),
            "no examples", InputError),
    ApiCase("finetune-position-outside",
            lambda tmp: _improve("regularise").finetune(
                _tiny(), [{"prompt": "The fox", "target": " x", "irrelevant": [40]}], lam=1.0,
                progress=False), "irrelevant position 40 is outside", InputError),
    ApiCase("api-finetune-out-parent-missing",
            lambda tmp: _improve("regularise").finetune(
                _tiny(), _rows(), out_dir=tmp / "no" / "run", progress=False),
            "does not exist", InputError, outputs=["{tmp}/no"]),
    ApiCase("finetune-bad-example-type",
            lambda tmp: _improve("regularise").finetune(_tiny(), [42], progress=False),
            "cannot read example 0", InputError),
    ApiCase("shortcuts-one-example",
            lambda tmp: _improve("shortcuts").detect_shortcuts(_tiny(), _rows(1), progress=False),
            "at least 2", InputError),
    ApiCase("api-shortcuts-min-count-0",
            lambda tmp: _improve("shortcuts").detect_shortcuts(_tiny(), _rows(), min_count=0,
                                                               progress=False),
            "min_count", InputError),
    ApiCase("steering-vector-layer-9",
            lambda tmp: _improve("steering").steering_vector(_tiny(), ["a"], ["b"], 9),
            "out of range", InputError),
    ApiCase("steering-vector-empty-set",
            lambda tmp: _improve("steering").steering_vector(_tiny(), [], ["b"], 0),
            "both sets", InputError),
    ApiCase("steering-sweep-layer-99",
            lambda tmp: _improve("steering").steering_sweep(
                _tiny(), ["a"], ["b"], ["c"], " x", " y", layers=[99], progress=False),
            "layer 99 is out of range", InputError),
    ApiCase("steering-sweep-no-layers",
            lambda tmp: _improve("steering").steering_sweep(
                _tiny(), ["a"], ["b"], ["c"], " x", " y", layers=[], progress=False),
            "no layers", InputError),
    ApiCase("steering-sweep-no-coefs",
            lambda tmp: _improve("steering").steering_sweep(
                _tiny(), ["a"], ["b"], ["c"], " x", " y", coefs=[], progress=False),
            "no steering coefficients", InputError),
    ApiCase("steering-sweep-no-eval-prompts",
            lambda tmp: _improve("steering").steering_sweep(
                _tiny(), ["a"], ["b"], [], " x", " y", progress=False),
            "no evaluation prompts", InputError),
    ApiCase("steer-wrong-dimensions", _steer_vector_wrong_dims, "dimensions", InputError),
    ApiCase("steering-vector-load-missing",
            lambda tmp: _improve("steering").SteeringVector.load(tmp / "v.safetensors"),
            "no steering vector file", InputError),
    ApiCase("steering-vector-load-json",
            lambda tmp: (_write("v.safetensors", "{}")(tmp),
                         _improve("steering").SteeringVector.load(tmp / "v.safetensors")),
            "cannot read", FormatError),
    ApiCase("shortcut-report-load-non-utf8",
            lambda tmp: (_write("r.json", b'{"format": "\xff"}')(tmp),
                         _improve("shortcuts").ShortcutReport.load(tmp / "r.json")),
            "not UTF-8", InputError),
    ApiCase("finetune-result-load-other-format",
            lambda tmp: (_write("f.json", json.dumps({"format": "lmxray.rrr/1"}))(tmp),
                         _improve("regularise").FinetuneResult.load(tmp / "f.json")),
            "lmxray.finetune", FormatError),
    ApiCase("finetune-result-load-newer-version",
            lambda tmp: (_write("f.json", json.dumps({"format": "lmxray.finetune/9"}))(tmp),
                         _improve("regularise").FinetuneResult.load(tmp / "f.json")),
            "upgrade lmxray", FormatError),
    ApiCase("rome-edit-layer-99",
            lambda tmp: _improve("editing").rome_edit(
                _tiny(), "The capital of France is", "France", " Rome", layer=99, cov=None),
            "out of range", InputError),
    ApiCase("key-covariance-no-texts",
            lambda tmp: _improve("editing").key_covariance(_tiny(), 0, []),
            "sample texts", InputError),
    ApiCase("evaluate-edits-too-many",
            lambda tmp: _improve("editing").evaluate_edits(
                _tiny(), [{"prompt": "a", "subject": "a", "answer": " b", "relation": "r",
                           "subject_text": "a"}], n_edits=3, progress=False),
            "known facts", InputError),
    ApiCase("api-amplify-shots-0",
            lambda tmp: _improve("prompting").amplify_experiment(
                _tiny(), [("a", " x"), ("b", " y")], [("c", " x")], n_shots=0, progress=False),
            "at least 1", InputError),
    ApiCase("amplify-one-label",
            lambda tmp: _improve("prompting").amplify_experiment(
                _tiny(), [("a", " x")], [("c", " x")], progress=False),
            "two candidate labels", InputError),
    ApiCase("api-amplify-shots-over-pool",
            lambda tmp: _improve("prompting").amplify_experiment(
                _tiny(), [("a", " x"), ("b", " y")], [("c", " x")], n_shots=3, progress=False),
            "cannot come from a pool", InputError),
    ApiCase("build-prompt-bad-condition",
            lambda tmp: _improve("prompting").build_prompt([], "q", condition="nope"),
            "condition", InputError),
    ApiCase("as-labelled-word-absent",
            lambda tmp: _improve("_common").as_labelled(
                [{"prompt": "The fox", "target": " x", "rationale": ["cat"]}], _tiny()),
            "does not occur", InputError),
    ApiCase("as-labelled-empty-target",
            lambda tmp: _improve("_common").as_labelled(
                [{"prompt": "The fox", "target": ""}], _tiny()),
            "empty target", InputError),
    ApiCase("rrr-demo-bad-annotation",
            lambda tmp: _improve("experiments").rrr_demo(_tiny(), annotation="nope",
                                                         progress=False),
            "annotation must be one of", InputError),
    ApiCase("memit-no-requests",
            lambda tmp: _improve("memit").memit_edit(_tiny(), [], layers=[0], cov_texts=["a b"]),
            "at least one edit request", InputError),
    ApiCase("memit-layer-99",
            lambda tmp: _improve("memit").memit_edit(
                _tiny(), [("The capital of France is", "France", " Rome")], layers=[99]),
            "must be in", InputError),
    ApiCase("memit-no-covariance",
            lambda tmp: _memit_one(),
            "key covariances", InputError),
    ApiCase("memit-bad-request",
            lambda tmp: _improve("memit").memit_edit(_tiny(), [("a", "b")], layers=[0]),
            "(prompt, subject, target)", InputError),
    ApiCase("memit-mom2-0",
            lambda tmp: _memit_one(mom2_weight=0),
            "mom2_weight", InputError),
    ApiCase("memit-weight-decay-negative",
            lambda tmp: _memit_one(weight_decay=-1.0),
            "weight_decay must be >= 0", InputError),
    ApiCase("memit-kl-factor-nan",
            lambda tmp: _memit_one(kl_factor=float("nan")),
            "kl_factor must be >= 0", InputError),
    ApiCase("memit-chunk-0",
            lambda tmp: _memit_one(chunk=0),
            "chunk must be at least 1", InputError),
    ApiCase("memit-mom2-nan",
            lambda tmp: _memit_one(mom2_weight=float("nan")),
            "mom2_weight", InputError),
    ApiCase("memit-key-rows-unknown",
            lambda tmp: _memit_one(key_rows="all"),
            "key_rows must be 'mean', 'prompt' or 'each'", InputError),
    ApiCase("memit-preserve-weight-negative",
            lambda tmp: _memit_one(preserve_weight=-1.0),
            "preserve_weight must be >= 0", InputError),
    ApiCase("memit-preserve-weight-nan",
            lambda tmp: _memit_one(preserve_weight=float("nan")),
            "preserve_weight must be >= 0", InputError),
    ApiCase("memit-preserve-subjects-no-texts",
            lambda tmp: _memit_one(covs={0: _eye(_tiny().hf.config.intermediate_size)},
                                   preserve_subjects=["Berlin"]),
            "preserve_subjects needs sample texts", InputError),
    ApiCase("memit-correct-rounds-negative",
            lambda tmp: _memit_one(correct_rounds=-1),
            "correct_rounds must be an integer >= 0", InputError),
    ApiCase("memit-correct-rounds-float",
            lambda tmp: _memit_one(correct_rounds=1.5),
            "correct_rounds must be an integer >= 0", InputError),
    ApiCase("memit-clamp-0",
            lambda tmp: _memit_one(clamp=0.0),
            "clamp must be positive", InputError),
    ApiCase("memit-covariances-no-texts",
            lambda tmp: _improve("editing").key_covariances(_tiny(), [0, 1], []),
            "sample texts", InputError),
    ApiCase("evaluate-memit-more-edits-than-subjects",
            lambda tmp: _improve("memit").evaluate_memit(
                _tiny(), [{"prompt": f"{s} t{k}", "subject": s, "answer": " b", "relation": r,
                           "subject_text": s} for s in ("x", "y") for r in ("p", "q")
                          for k in (1, 2)], n_edits=3, progress=False),
            "only 2 subjects have facts with paraphrases", InputError),
    ApiCase("context-prefixes-no-text",
            lambda tmp: _improve("editing").context_prefixes(["", " "], 2),
            "sample texts", InputError),
    ApiCase("distill-curve-fraction-0",
            lambda tmp: _improve("distill").distill_curve([0.0], [0], progress=False),
            "(0, 1]", InputError),
    ApiCase("distill-curve-no-seeds",
            lambda tmp: _improve("distill").distill_curve([0.5], [], progress=False),
            "at least one seed", InputError),
    ApiCase("distill-curve-unknown-rationale",
            lambda tmp: _improve("distill").distill_curve(
                [0.5], [0], config=_improve("distill").DistillConfig(rationale="why"),
                progress=False), "unknown rationale 'why'", InputError),
    ApiCase("distill-examples-unknown-rationale",
            lambda tmp: _improve("distill").distill_examples(2, 0, "train", "why"),
            "unknown rationale 'why'", InputError),
    ApiCase("distill-student-no-data",
            lambda tmp: _improve("distill").train_student([], [], rationale=True),
            "training and test examples", InputError),
    ApiCase("edit-prompt-subject-absent",
            lambda tmp: _improve("experiments").edit_prompt(
                _tiny(), "The capital of France is", "Spain", " Rome"),
            "does not occur", InputError),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
