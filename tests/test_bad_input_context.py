"""Bad input for context attribution (``attribute_context``, ``lmxray explain --features``) and
long prompts: each is refused with one line (exit 2 on the CLI), nothing written."""

from __future__ import annotations

import functools

import pytest

import lmxray
from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from lmxray.attribution.context import attribute_context, split_sources
from lmxray.errors import InputError

DOC = "The sky was grey. Anna baked bread. The bus was late."
LONG = " ".join(["The sky was grey and the bus was late."] * 80)  # > 512 tokens


@functools.lru_cache(maxsize=1)
def _tiny():
    return lmxray.load()


def _ctx(context=DOC, **kw):
    kw.setdefault("target", " Anna")
    return lambda tmp: attribute_context(_tiny(), context, **kw)


def _explain(*extra):
    return ["explain", DOC, "-t", " Anna", "--features", "sentence", *extra]


CLI_CASES: list[CliCase] = [
    CliCase("context-unknown-features", ["explain", DOC, "--features", "clause"], "--features"),
    CliCase("context-unknown-method", _explain("--context-method", "lime"), "--context-method"),
    CliCase("context-zero-ablations", _explain("--n-ablations", "0"), "--n-ablations"),
    CliCase("context-with-method", _explain("--method", "occlusion"), "do not apply with --features"),
    CliCase("context-with-foil", _explain("--foil", " Bob"), "do not apply with --features"),
    CliCase("context-target-and-new-tokens", _explain("-n", "3"), "either --target or --max-new-tokens"),
    CliCase("context-json-is-a-folder", _explain("--json", "{tmp}"), "is a directory"),
    CliCase("context-no-such-folder", _explain("--json", "{tmp}/no/a.json"), "does not exist",
            outputs=["{tmp}/no/a.json"]),
    CliCase("context-both-to-stdout", _explain("--json", "-", "--html", "-"), "only one of --json"),
    CliCase("context-empty-prompt", ["explain", " ", "-t", " x", "--features", "sentence"],
            "context is empty"),
    CliCase("context-empty-target", ["explain", DOC, "-t", "", "--features", "sentence"],
            "non-empty string"),
    CliCase("context-prompt-too-long", ["explain", LONG, "-t", " x", "--features", "paragraph",
                                        "--json", "{tmp}/a.json"],
            "longer than the model's context of 512", outputs=["{tmp}/a.json"]),
    CliCase("context-shapley-too-many", ["explain", " ".join(["A b."] * 20), "-t", " x",
                                         "--features", "sentence", "--context-method", "shapley"],
            "exact Shapley over 20 sources"),
]

API_CASES: list[ApiCase] = [
    ApiCase("context-not-a-partition-strings",
            _ctx(sources=["The sky was grey. ", "Anna baked bread."]),
            "do not partition the context", InputError),
    ApiCase("context-not-a-partition-typo",
            _ctx(sources=["The sky was gray. ", "Anna baked bread. ", "The bus was late."]),
            "differs from it", InputError),
    ApiCase("context-spans-gap", _ctx(sources=[(0, 10), (12, 53)]), "should start at character 10",
            InputError),
    ApiCase("context-spans-short", _ctx(sources=[(0, 10), (10, 40)]), "they end at character 40",
            InputError),
    ApiCase("context-spans-not-numbers", _ctx(sources=[("a", "b")]), "list of strings", InputError),
    ApiCase("context-empty-source", _ctx(sources=["The sky was grey.", " ", "Anna baked bread. The bus was late."]),
            "empty or only whitespace", InputError),
    ApiCase("context-no-sources", _ctx(sources=[]), "sources is empty", InputError),
    ApiCase("context-unknown-kind", _ctx(sources="clause"), "unknown source kind", InputError),
    ApiCase("context-message-needs-chat", _ctx(sources="message"), "list of chat messages",
            InputError),
    ApiCase("context-empty-context", _ctx(context=""), "context is empty", InputError),
    ApiCase("context-not-text", _ctx(context=42), "context is empty", InputError),
    ApiCase("context-unknown-method-api", _ctx(method="lime"), "unknown context method", InputError),
    ApiCase("context-zero-ablations-api", _ctx(n_ablations=0), "n_ablations must be", InputError),
    ApiCase("context-bool-ablations", _ctx(n_ablations=True), "n_ablations must be", InputError),
    ApiCase("context-negative-heldout", _ctx(n_heldout=-1), "n_heldout must be", InputError),
    ApiCase("context-keep-prob-one", _ctx(keep_prob=1.0), "keep_prob must be", InputError),
    ApiCase("context-keep-prob-text", _ctx(keep_prob="half"), "keep_prob must be", InputError),
    ApiCase("context-empty-target-api", _ctx(target=""), "non-empty string", InputError),
    ApiCase("context-bad-replace", _ctx(replace="mask"), "replace must be", InputError),
    ApiCase("context-too-long", _ctx(context=LONG), "longer than the model's context of 512",
            InputError),
    ApiCase("context-shapley-too-many-api", _ctx(context=" ".join(["A b."] * 20), method="shapley"),
            "exact Shapley over 20 sources", InputError),
    ApiCase("context-split-unknown-kind", lambda tmp: split_sources(DOC, "word"),
            "unknown source kind", InputError),
    ApiCase("attribute-too-long", lambda tmp: _tiny().attribute(LONG, target=" x",
                                                                method="occlusion"),
            "longer than the model's context of 512", InputError),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
