"""Every fenced ``python`` and ``bash`` block of the README runs as written, in a fresh process
and a fresh folder, on the embedded model (no network).

The two set-up blocks start with the install step (``pip install ... &&``) that ``.ci/run`` has
just performed; the test runs the rest of those lines. The test-command block is what ``.ci/run``
runs (it would run this test again): for it, the test checks that ``.ci/run`` holds exactly that
line. Blocks fenced as ``text`` are output, not
commands. Each block is its own test, so a failure names the block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
INSTALL = re.compile(r"^(?:python3? -m )?pip install [^&\n]*&&\s*", re.M)
# Every block that runs starts a fresh interpreter that imports torch and loads a model, often
# several CLI commands in a row (8-35 s each on two cores): all are ``slow``, so the fast loop
# skips them and the full suite (``.ci/run``) runs every one. Only the test-command block, which
# just reads ``.ci/run``, stays in the fast loop.


def blocks() -> list[tuple[str, str, int]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        if lang in ("python", "bash"):
            out.append((lang, body, text[: m.start()].count("\n") + 1))
    return out


def _params():
    for lang, body, line in blocks():
        marks = [] if "pytest" in body else [pytest.mark.slow]
        yield pytest.param(lang, body, id=f"{lang}-line{line}", marks=marks)


def test_readme_has_runnable_blocks():
    langs = [lang for lang, _, _ in blocks()]
    assert "python" in langs and "bash" in langs


@pytest.mark.parametrize(("lang", "body"), list(_params()))
def test_readme_block_runs(lang, body, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "100",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    if "pytest" in body:
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        assert body.strip() in ci.splitlines(), ".ci/run must run exactly the README's test command"
        return
    if lang == "python":
        cmd = [sys.executable, "-c", body]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", INSTALL.sub("", body)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"README block failed:\n{body}\n--- stderr ---\n{proc.stderr[-3000:]}"
