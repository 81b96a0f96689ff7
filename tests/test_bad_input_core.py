"""Bad input for ``lmxray explain`` / ``methods`` and the attribution API."""

from __future__ import annotations

import pytest
from badinput import ApiCase, CliCase, run_api_case, run_cli_case

CLI_CASES: list[CliCase] = [
    CliCase("explain-json-is-a-folder", ["explain", "hi", "--json", "{tmp}"], "is a directory"),
    CliCase("explain-no-such-folder", ["explain", "hi", "--json", "{tmp}/no/a.json"],
            "does not exist", outputs=["{tmp}/no/a.json"]),
]


def _tiny():
    import lmxray

    return lmxray.load()


API_CASES: list[ApiCase] = [
    ApiCase("attribute-unknown-method",
            lambda tmp: _tiny().attribute("hi", target=" x", method="nope"), "unknown method"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
