"""Bad input for ``lmxray sae train | eval | show | scan``, ``lmxray tcav`` and the concepts API:
each is refused with one line (exit 2 on the CLI), nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from lmxray.concepts import SAE, SAEConfig, TrainConfig, load_sae
from lmxray.concepts.cav import concept_significance, outlier_p, train_cav
from lmxray.concepts.data import text_stream
from lmxray.errors import FormatError, InputError, MethodError


def _sae(d_in: int = 128, d_sae: int = 16, kind: str = "topk") -> SAE:
    sae = SAE(SAEConfig(d_in, d_sae, kind, 4, site="layers.1.resid_post", model="lmxray-tiny"))
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_enc.copy_(sae.W_dec.t())
    return sae


def _saved(d_in: int = 128, then=None):
    def setup(tmp):
        _sae(d_in).save(tmp / "sae")
        if then is not None:
            then(tmp / "sae")
    return setup


def _write(name: str, data: bytes):
    def setup(tmp):
        (tmp / name).write_bytes(data)
    return setup


def _edit_cfg(**changes):
    def edit(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(changes)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return edit


def _nan_weights(folder):
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "sae_weights.safetensors"))
    t["W_dec"][0, 0] = float("nan")
    save_file(t, str(folder / "sae_weights.safetensors"))


SAE_DIR = "{tmp}/sae"
TRAIN = ["sae", "train", "--site", "layers.1.resid_post", "--out", "{tmp}/out", "--steps", "1"]
NEW = ["{tmp}/out/cfg.json", "{tmp}/out/sae_weights.safetensors"]

CLI_CASES: list[CliCase] = [
    # sae train: values, checked before the model is loaded
    CliCase("train-unknown-kind", [*TRAIN, "--kind", "gated"], "unknown SAE kind", NEW),
    CliCase("train-zero-width", [*TRAIN, "--width", "0"], "d_sae must be a positive", NEW),
    CliCase("train-zero-k", [*TRAIN, "--k", "0"], "k must be a positive", NEW),
    CliCase("train-k-over-width", [*TRAIN, "--width", "8", "--k", "9"], "exceeds the SAE width", NEW),
    CliCase("train-zero-steps", [*TRAIN[:-1], "0"], "steps must be a positive", NEW),
    CliCase("train-negative-lr", [*TRAIN, "--lr", "-1"], "lr must be a positive", NEW),
    CliCase("train-negative-l1", [*TRAIN, "--l1", "-0.1", "--kind", "relu"], "l1 must be", NEW),
    CliCase("train-out-is-a-file", [*TRAIN[:-3], "{tmp}/f", "--steps", "1"], "is a file",
            setup=_write("f", b"x")),
    CliCase("train-out-parent-missing", [*TRAIN[:-3], "{tmp}/no/out", "--steps", "1"],
            "does not exist", ["{tmp}/no/out"]),
    CliCase("train-json-no-folder", [*TRAIN, "--json", "{tmp}/no/a.json"], "does not exist", NEW),
    CliCase("train-corpus-missing", [*TRAIN, "--corpus", "{tmp}/none.txt"], "does not exist", NEW),
    CliCase("train-corpus-wrong-type", [*TRAIN, "--corpus", "{tmp}/c.csv"], ".txt or .jsonl",
            NEW, setup=_write("c.csv", b"a,b\n")),
    CliCase("train-corpus-empty", [*TRAIN, "--corpus", "{tmp}/c.txt"], "holds no text", NEW,
            setup=_write("c.txt", b"\n\n")),
    CliCase("train-corpus-not-utf8", [*TRAIN, "--corpus", "{tmp}/c.txt"], "not UTF-8", NEW,
            setup=_write("c.txt", b"\xff\xfe bad\n")),
    CliCase("train-corpus-bad-jsonl", [*TRAIN, "--corpus", "{tmp}/c.jsonl"], "line 1", NEW,
            setup=_write("c.jsonl", b"{not json\n")),
    CliCase("train-corpus-row-without-text", [*TRAIN, "--corpus", "{tmp}/c.jsonl"], "'text'", NEW,
            setup=_write("c.jsonl", b'{"x": 1}\n')),
    CliCase("train-empty-folder-corpus", [*TRAIN, "--corpus", "{tmp}"], "holds no .txt", NEW),
    CliCase("train-unknown-site", [*TRAIN[:2], "--site", "nope", *TRAIN[4:]], "unknown site", NEW),
    CliCase("train-site-out-of-range", [*TRAIN[:2], "--site", "layers.9.resid_post", *TRAIN[4:]],
            "out of range", NEW),
    # sae eval / show / scan: the SAE folder
    CliCase("eval-missing-folder", ["sae", "eval", "{tmp}/nope"], "does not exist"),
    CliCase("eval-no-cfg", ["sae", "eval", "{tmp}"], "holds no cfg.json"),
    CliCase("eval-corrupt-weights", ["sae", "eval", SAE_DIR], "corrupt",
            setup=_saved(then=lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x00garbage"))),
    CliCase("eval-missing-weights", ["sae", "eval", SAE_DIR], "holds no sae_weights",
            setup=_saved(then=lambda f: (f / "sae_weights.safetensors").unlink())),
    CliCase("eval-cfg-not-json", ["sae", "eval", SAE_DIR], "cfg.json",
            setup=_saved(then=lambda f: (f / "cfg.json").write_text("{oops"))),
    CliCase("eval-cfg-no-width", ["sae", "eval", SAE_DIR], "integer d_in and d_sae",
            setup=_saved(then=_edit_cfg(d_in="128"))),
    CliCase("eval-cfg-unknown-architecture", ["sae", "eval", SAE_DIR], "not supported",
            setup=_saved(then=_edit_cfg(architecture="gated"))),
    CliCase("eval-cfg-normalised", ["sae", "eval", SAE_DIR], "normalize_activations",
            setup=_saved(then=_edit_cfg(normalize_activations="layer_norm"))),
    CliCase("eval-weights-wrong-shape", ["sae", "eval", SAE_DIR], "expected",
            setup=_saved(then=_edit_cfg(d_sae=17))),
    CliCase("eval-weights-nan", ["sae", "eval", SAE_DIR], "NaN", setup=_saved(then=_nan_weights)),
    CliCase("eval-width-does-not-fit", ["sae", "eval", SAE_DIR], "wide", setup=_saved(d_in=64)),
    CliCase("eval-width-does-not-fit-no-output", ["sae", "eval", SAE_DIR, "--json", "{tmp}/e.json",
                                                  "--html", "{tmp}/e.html"], "wide",
            ["{tmp}/e.json", "{tmp}/e.html"], setup=_saved(d_in=64)),
    CliCase("eval-corrupt-weights-no-output", ["sae", "eval", SAE_DIR, "--json", "{tmp}/e.json"],
            "corrupt", ["{tmp}/e.json"],
            setup=_saved(then=lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x00junk"))),
    CliCase("show-corrupt-weights-no-output", ["sae", "show", SAE_DIR, "--feature", "0", "--html",
                                               "{tmp}/v.html"], "corrupt", ["{tmp}/v.html"],
            setup=_saved(then=lambda f: (f / "sae_weights.safetensors").write_bytes(b"junk"))),
    CliCase("eval-width-does-not-fit-mlp", ["sae", "eval", SAE_DIR, "--site", "layers.0.mlp.hidden"],
            "wide", setup=_saved()),
    CliCase("eval-unknown-site", ["sae", "eval", SAE_DIR, "--site", "layers.1.nope"],
            "unknown site kind", setup=_saved()),
    CliCase("eval-zero-texts", ["sae", "eval", SAE_DIR, "--n-texts", "0"], "--n-texts must be",
            setup=_saved()),
    CliCase("eval-json-is-a-folder", ["sae", "eval", SAE_DIR, "--json", "{tmp}"], "directory",
            setup=_saved()),
    CliCase("show-feature-out-of-range", ["sae", "show", SAE_DIR, "--feature", "16"],
            "out of range", ["{tmp}/v.html"], setup=_saved()),
    CliCase("show-negative-feature", ["sae", "show", SAE_DIR, "--feature", "-1", "--html",
                                      "{tmp}/v.html"], "out of range", ["{tmp}/v.html"],
            setup=_saved()),
    CliCase("scan-small-n", ["sae", "scan", SAE_DIR, "--n", "0"], "--n must be"),
    # tcav
    CliCase("tcav-nothing", ["tcav", "--site", "layers.1.resid_post"], "either --continent"),
    CliCase("tcav-unknown-continent", ["tcav", "--site", "layers.1.resid_post", "--continent",
                                       "Atlantis", "--n-random", "2"], "unknown continent"),
    CliCase("tcav-bad-concept-spec", ["tcav", "--site", "layers.1.resid_post", "--concept", "x",
                                      "--inputs", "{tmp}/i.jsonl"], "NAME=FILE",
            setup=_write("i.jsonl", b'{"prompt": "a", "target": " b"}\n')),
    CliCase("tcav-concept-without-inputs", ["tcav", "--site", "layers.1.resid_post", "--concept",
                                            "x={tmp}/c.txt"], "--inputs",
            setup=_write("c.txt", b"a\n")),
    CliCase("tcav-inputs-without-target", ["tcav", "--site", "layers.1.resid_post", "--concept",
                                           "x={tmp}/c.txt", "--inputs", "{tmp}/i.jsonl"],
            "'prompt' and 'target'", setup=lambda t: (_write("c.txt", b"a\n")(t),
                                                      _write("i.jsonl", b'{"prompt": "a"}\n')(t))),
    CliCase("tcav-one-random", ["tcav", "--site", "layers.1.resid_post", "--continent", "Africa",
                                "--n-random", "1"], "--n-random"),
    CliCase("tcav-unknown-site", ["tcav", "--site", "layers.1.bad", "--continent", "Africa",
                                  "--n-random", "2", "--json", "{tmp}/t.json"], "unknown site kind",
            ["{tmp}/t.json"]),
]


API_CASES: list[ApiCase] = [
    ApiCase("config-kind", lambda t: SAEConfig(8, 16, "gated"), "unknown SAE kind", InputError),
    ApiCase("config-width", lambda t: SAEConfig(8, 0), "d_sae", InputError),
    ApiCase("train-config", lambda t: TrainConfig(batch_tokens=0).check(), "batch_tokens", InputError),
    ApiCase("train-config-bandwidth", lambda t: TrainConfig(bandwidth=0).check(), "bandwidth",
            InputError),
    ApiCase("load-missing", lambda t: load_sae(t / "nope"), "does not exist", InputError),
    ApiCase("load-corrupt", lambda t: (_saved(then=lambda f: (f / "sae_weights.safetensors")
                                              .write_bytes(b"junk"))(t), load_sae(t / "sae")),
            "corrupt", FormatError),
    ApiCase("save-over-a-file", lambda t: ((t / "f").write_text("x"), _sae().save(t / "f")),
            "a file of that name exists", InputError),
    ApiCase("encode-wrong-width", lambda t: _sae(16).encode(torch.zeros(2, 8)), "wide", InputError),
    ApiCase("corpus-missing", lambda t: text_stream(t / "none.txt"), "does not exist", InputError),
    ApiCase("corpus-not-text", lambda t: text_stream(3), "cannot read a corpus", InputError),
    ApiCase("cav-too-few", lambda t: train_cav(torch.zeros(2, 4).numpy(), torch.zeros(2, 4).numpy()),
            "at least 3", InputError),
    ApiCase("train-config-init-threshold", lambda t: TrainConfig(init_threshold=-1.0).check(),
            "init_threshold", InputError),
    ApiCase("tcav-fewer-tests-than-concepts", lambda t: concept_significance(
        {"a": _ones(5), "b": _ones(5)}, _ones(40), _ones(3), n_tests=1), "n_tests", InputError),
    ApiCase("tcav-one-run", lambda t: concept_significance({"a": _ones(5)}, _ones(40), _ones(3),
                                                           n_random=1), "n_random", InputError),
    ApiCase("tcav-tiny-random-sets", lambda t: concept_significance(
        {"a": _ones(5)}, _ones(40), _ones(3), random_size=2), "random_size", InputError),
    ApiCase("tcav-small-pool", lambda t: concept_significance({"a": _ones(30)}, _ones(10), _ones(3)),
            "larger random pool", InputError),
    ApiCase("tcav-null-of-one", lambda t: outlier_p(0.5, [0.5]), "at least 2", InputError),
    ApiCase("unattached-site", lambda t: _site_map().__getitem__("layers.0.resid_post.sae"),
            "no sparse autoencoder is attached", MethodError),
]


def _ones(n: int) -> np.ndarray:
    return np.ones((n, 4))


def _site_map():
    import lmxray
    from lmxray.sites import site_map

    return site_map(lmxray.load())


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# cases that load the model (seconds each on a shared machine): the full suite runs them
_SLOW = {"train-unknown-site", "train-site-out-of-range", "eval-width-does-not-fit-mlp",
         "eval-unknown-site", "tcav-unknown-continent", "tcav-unknown-site", "unattached-site"}


def _params(cases):
    return [pytest.param(c, id=c.id, marks=pytest.mark.slow) if c.id in _SLOW
            else pytest.param(c, id=c.id) for c in cases]


@pytest.mark.parametrize("case", _params(CLI_CASES))
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", _params(API_CASES))
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)
