"""Linear probes: activations are read at the right token, accuracies match a direct scikit-learn
computation, control tasks follow Hewitt & Liang (one random label per type), selectivity behaves."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.hooks import run_with_cache
from lmxray.internals import ProbeResult, control_labels, probe
from lmxray.internals.probing import collect


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def tiny(family: str = "gpt2") -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


WORDS = ["dog", "fox", "Paris", "Rome", "red", "blue", "Mary", "John", "store", "film"]


def data(n: int = 60, seed: int = 123):
    rng = np.random.default_rng(seed)
    prompts, last = [], []
    for _ in range(n):
        a, b = rng.choice(WORDS, 2)
        prompts.append(f"The {a} and the {b}")
        last.append(str(b))
    return prompts, last


def test_collect_reads_the_requested_token():
    m = tiny()
    prompts = ["The capital of France is", "Mary and John", "The quick brown fox jumps"]
    X, layers, keys = collect(m, prompts, position=[1, -1, 2], batch_size=2)
    assert X.shape == (3, 3, m.d_model) and layers == [-1, 0, 1]
    for i, (p, pos) in enumerate(zip(prompts, [1, -1, 2], strict=True)):
        c = run_with_cache(m, p, cache=["layers.0.resid_pre", "resid_post"])
        ids = m.encode(p)
        assert keys[i] == ids[pos]
        np.testing.assert_allclose(X[i, 0], c["layers.0.resid_pre"][0, pos].numpy(), atol=1e-6)
        np.testing.assert_allclose(X[i, 2], c["layers.1.resid_post"][0, pos].numpy(), atol=1e-5)
    Xa, la, _ = collect(m, prompts, site="attn.out")
    assert la == [0, 1] and Xa.shape[1] == 2
    with pytest.raises(InputError):
        collect(m, prompts, position=40)
    with pytest.raises(InputError):
        collect(m, prompts, site="attn.pattern")


def test_control_labels_are_one_random_label_per_type():
    labels = ["a"] * 30 + ["b"] * 10
    keys = [i % 8 for i in range(40)]
    ctrl = control_labels(labels, keys, seed=1)
    by_key: dict[int, set] = {}
    for k, c in zip(keys, ctrl, strict=True):
        by_key.setdefault(k, set()).add(c)
    assert all(len(v) == 1 for v in by_key.values())
    assert set(ctrl) <= {"a", "b"}
    assert ctrl == control_labels(labels, keys, seed=1)
    many = control_labels(["a"] * 300 + ["b"] * 100, list(range(400)), seed=0)
    assert 0.65 < Counter(many)["a"] / 400 < 0.85  # the label distribution is kept
    with pytest.raises(InputError):
        control_labels(labels, keys[:3])


def test_probe_matches_sklearn_and_reports_selectivity():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    m = tiny()
    prompts, last = data()
    labels = ["animal" if w in ("dog", "fox") else "city" if w in ("Paris", "Rome") else "other" for w in last]
    r = probe(m, prompts, labels, cv=3, seed=0)
    X, _, _ = collect(m, prompts)
    y = np.asarray(labels)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    for li in (0, 2):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        with threadpool_limits(1):
            ref = cross_val_score(clf, X[:, li], y, cv=folds).mean()
        assert r.accuracy[li] == pytest.approx(ref, abs=1e-9)
    # the label is a function of the last token's type: the embedding row decodes it, but a
    # control task keyed on that same token is just as decodable, so selectivity is ~0 there
    assert r.accuracy[0] > 0.9 and r.control_accuracy[0] > 0.9
    assert abs(r.selectivity[0]) < 0.15
    # with control keys that never recur, the control task cannot be memorised: ~chance
    r2 = probe(m, prompts, labels, cv=3, control_keys=list(range(len(prompts))))
    assert r2.selectivity[0] > 0.3 and r2.n_types == len(prompts)
    assert r.best()[0] in r.layers and "selectivity" in r.table()


def test_roundtrip_and_errors(tmp_path):
    m = tiny()
    prompts, last = data(30)
    r = probe(m, prompts, last, cv=2)
    back = ProbeResult.load(r.save(tmp_path / "p.json"))
    np.testing.assert_allclose(back.accuracy, r.accuracy)
    np.testing.assert_allclose(back.selectivity, r.selectivity)
    with pytest.raises(InputError, match="single class"):
        probe(m, prompts, ["x"] * 30)
    with pytest.raises(InputError, match="one label per prompt"):
        probe(m, prompts, last[:3])
    with pytest.raises(InputError, match="cv"):
        probe(m, prompts, last, cv=1)
