"""Prefix KV-cache reuse equals full recomputation on the six tiny families, under whatever
transformers this interpreter has (run it in the transformers-4.x Captum venv and in the dev venv).

    benchmarks/.peers/venv-captum/bin/python benchmarks/perturbation/check_prefix.py
    python benchmarks/perturbation/check_prefix.py

Prints the largest difference per family and method and ends with "all families equal" (exit 0)
or a failure line (exit 1).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
try:  # conftest imports pytest for its fixtures only
    import pytest  # noqa: F401
except ImportError:
    stub = types.ModuleType("pytest")
    stub.fixture = lambda *a, **k: (lambda f: f)  # type: ignore[attr-defined]
    stub.__spec__ = importlib.machinery.ModuleSpec("pytest", None)
    sys.modules["pytest"] = stub
import lmxray  # noqa: E402
from conftest import FAMILIES, build_tiny  # noqa: E402
from lmxray.attribution._prefix import count_forward_tokens, prefix_cache  # noqa: E402

PROMPTS = ["The capital of France is Paris. The capital of Italy is",
           "When Mary and John went to the store, John gave"]
TARGETS = [" Rome. The quick", " a drink to Mary"]


def main() -> int:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__} transformers {transformers.__version__}")
    worst = 0.0
    for fam in FAMILIES:
        hf, tok = build_tiny(fam)
        m = lmxray.load(model=hf, tokenizer=tok)
        for kw in (dict(method="occlusion"), dict(method="occlusion", replace="baseline"),
                   dict(method="kernel_shap", n_samples=24, replace="baseline")):
            with prefix_cache("off"):
                a = m.attribute(PROMPTS, target=TARGETS, **kw)
            with prefix_cache("on"), count_forward_tokens() as st:
                b = m.attribute(PROMPTS, target=TARGETS, **kw)
            err = max(float(np.nanmax(np.abs(x.scores - y.scores))) for x, y in zip(a, b, strict=True))
            worst = max(worst, err)
            print(f"{fam:9s} {kw['method']:12s} {kw.get('replace', 'remove'):8s} max|diff| "
                  f"{err:.1e}  positions {st.computed_tokens}/{st.naive_tokens} "
                  f"(reused {st.reused_tokens})")
            if st.reused_tokens == 0:
                print(f"FAIL: no reuse for {fam}")
                return 1
    if worst > 1e-5:
        print(f"FAIL: largest difference {worst:.1e} > 1e-5")
        return 1
    print(f"all families equal (largest difference {worst:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
