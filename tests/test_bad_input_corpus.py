"""The bad-input corpus as a whole: every area's cases are collected, ids are unique."""

from __future__ import annotations

import importlib
from pathlib import Path

AREAS = sorted(p.stem for p in Path(__file__).parent.glob("test_bad_input_*.py")
               if p.stem != "test_bad_input_corpus")


def _cases() -> tuple[list, list]:
    cli_cases, api_cases = [], []
    for area in AREAS:
        mod = importlib.import_module(area)
        cli_cases += list(getattr(mod, "CLI_CASES", []))
        api_cases += list(getattr(mod, "API_CASES", []))
    return cli_cases, api_cases


def test_corpus_ids_are_unique_and_the_corpus_is_not_empty():
    cli_cases, api_cases = _cases()
    ids = [c.id for c in cli_cases + api_cases]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(cli_cases) >= 1 and len(api_cases) >= 1


if __name__ == "__main__":  # prints the corpus size: python tests/test_bad_input_corpus.py
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    c, a = _cases()
    print(f"bad-input corpus: {len(c)} CLI cases, {len(a)} API cases, {len(c) + len(a)} in all")
