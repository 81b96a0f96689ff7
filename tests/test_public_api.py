"""The public surface: everything in __all__ exists, and nothing public is missing from it."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import lmxray


def test_all_names_exist():
    for name in lmxray.__all__:
        assert getattr(lmxray, name) is not None, name


def test_public_members_are_exported():
    for name in lmxray.__all__:
        getattr(lmxray, name)  # resolve the lazy ones
    public = {
        name for name, obj in vars(lmxray).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
        and getattr(obj, "__module__", "").startswith("lmxray")
    }
    assert public <= set(lmxray.__all__), sorted(public - set(lmxray.__all__))


def test_import_is_light():
    code = "import sys, lmxray, lmxray.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_methods_have_descriptions():
    for name, desc in lmxray.methods().items():
        assert desc and "\n" not in desc and len(desc) < 120, name


@pytest.mark.slow
def test_subpackages_resolve_lazily_on_a_fresh_import():
    code = (
        "import sys, lmxray; assert 'lmxray.evaluate' not in sys.modules; "
        "assert callable(lmxray.evaluate); print(lmxray.zoo.TASKS[0], callable(lmxray.improve.finetune))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["facts", "True"]
