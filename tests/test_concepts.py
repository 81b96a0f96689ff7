"""Sparse autoencoders and concept vectors (lmxray.concepts): the SAE maps, training on a known
sparse dictionary, exact resumption, latents as sites, attribution through latents, TCAV's
test, views. Small settings; the SAELens round trip and model-trained SAEs are marked slow."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

import lmxray
from lmxray.concepts import (
    SAE,
    SAEConfig,
    TrainConfig,
    attach,
    attribute_feature,
    auroc_per_feature,
    feature_attribution,
    feature_op,
    fit_sae,
    load_sae,
    train_cav,
)
from lmxray.concepts.cav import tcav_score
from lmxray.concepts.results import ConceptScan, FeatureView, SAEEval, TCAVResult
from lmxray.errors import InputError, MethodError
from lmxray.sites import site_map
from lmxray.training import Interrupted

SITE = "layers.1.resid_post"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one thread is many times faster on a shared machine."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def m():
    return lmxray.load()


def random_sae(d_in: int = 128, d_sae: int = 64, kind: str = "topk", k: int = 8, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in, d_sae, kind, k, site=SITE, model="lmxray-tiny"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
        sae.normalise_decoder()
        sae.W_enc.copy_(sae.W_dec.t() * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        sae.log_threshold.fill_(float(np.log(0.05)))
    return sae.requires_grad_(False)


@pytest.fixture(scope="module")
def attached(m):
    sae = random_sae()
    name = attach(m, sae, SITE)
    yield name, sae
    site_map(m).detach(name)


# --------------------------------------------------------------------------- the SAE maps
@pytest.mark.parametrize("kind", ["topk", "batchtopk", "jumprelu", "relu"])
def test_encode_rules(kind):
    sae = random_sae(16, 32, kind, k=4)
    x = torch.randn(50, 16)
    f = sae.encode(x)
    z = sae.pre(x)
    assert f.shape == (50, 32) and bool((f >= 0).all())
    if kind == "topk":
        assert bool(((f > 0).sum(-1) <= 4).all())
        kept = torch.gather(z, -1, z.topk(4).indices)
        assert torch.allclose(f.sum(-1), kept.relu().sum(-1))
    elif kind == "relu":
        assert torch.equal(f, z.relu())
    else:  # a JumpReLU at inference
        assert torch.equal(f, z.relu() * (z > 0.05))
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)


def test_fold_scale_keeps_the_function():
    sae = random_sae(16, 32, "jumprelu")
    x = torch.randn(20, 16) * 3
    before = sae(x * 2.0) / 2.0
    sae.fold_scale(2.0)
    assert torch.allclose(sae(x), before, atol=1e-5)


_DICT = torch.randn(32, 16, generator=torch.Generator().manual_seed(1234))


def _sparse_data(step: int, n: int = 256, atoms: int = 32, k: int = 2) -> torch.Tensor:
    """Activations made of ``k`` of ``atoms`` random directions (a known sparse dictionary)."""
    dictionary = _DICT[:atoms]
    g = torch.Generator().manual_seed(step)
    idx = torch.rand(n, atoms, generator=g).topk(k).indices
    coef = torch.zeros(n, atoms).scatter(1, idx, 1 + torch.rand(n, k, generator=g))
    return coef @ dictionary


_SPARSITY = {"topk": {}, "batchtopk": {}, "jumprelu": {"l0_coef": 1.0}, "relu": {"l1": 1.0}}
_MAX_L0 = {"topk": 4, "batchtopk": 4.5, "jumprelu": 20, "relu": 15}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "batchtopk", "jumprelu", "relu"])
def test_training_fits_a_sparse_dictionary(kind):
    cfg = TrainConfig(kind=kind, d_sae=96, k=4, steps=300, batch_tokens=256, lr=3e-3,
                      dead_tokens=5000, **_SPARSITY[kind])
    run = fit_sae(_sparse_data, 16, cfg, progress=False)
    x = _sparse_data(10_000)
    f = run.sae.encode(x)
    fve = 1 - ((run.sae.decode(f) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    l0 = float((f > 0).sum(-1).float().mean())
    assert fve > 0.85, (kind, float(fve), l0)
    assert l0 <= _MAX_L0[kind], (kind, l0)
    assert torch.allclose(run.sae.W_dec.norm(dim=-1) * run.info["scale"],
                          torch.ones(96), atol=1e-4)  # unit decoder rows (before folding)
    if kind == "batchtopk":
        assert float(run.sae.threshold[0]) > 0


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "jumprelu", "relu"])
def test_short_training_runs(kind):
    cfg = TrainConfig(kind=kind, d_sae=32, k=3, steps=8, batch_tokens=64)
    run = fit_sae(lambda s: _sparse_data(s, 64), 16, cfg, progress=False)
    assert run.info["tokens"] == 8 * 64 and np.isfinite(run.info["mse"])
    if kind == "topk":
        assert run.info["l0"] == 3.0
    if kind == "batchtopk":  # k per token on average over the batch, at most
        assert run.info["l0"] <= 3.0


def test_resume_after_interrupt_is_exact(tmp_path):
    cfg = TrainConfig(d_sae=32, k=3, steps=12, batch_tokens=64, lr=3e-3)
    full = fit_sae(lambda s: _sparse_data(s, 64), 16, cfg, progress=False)

    def interrupting(step: int) -> torch.Tensor:
        if step == 5:
            signal.raise_signal(signal.SIGINT)
        return _sparse_data(step, 64)

    with pytest.raises(Interrupted) as info:
        fit_sae(interrupting, 16, cfg, progress=False, checkpoint=tmp_path / "ck", checkpoint_every=4)
    assert info.value.step == 6
    resumed = fit_sae(lambda s: _sparse_data(s, 64), 16, cfg, progress=False,
                      checkpoint=tmp_path / "ck")
    assert resumed.info["resumed_from"] == 6
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(full.sae, key), getattr(resumed.sae, key), atol=1e-6), key


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind", ["topk", "jumprelu", "relu", "batchtopk"])
def test_save_load_round_trip(tmp_path, kind):
    sae = random_sae(16, 32, kind, k=4)
    sae.save(tmp_path / "s")
    back = load_sae(tmp_path / "s")
    x = torch.randn(10, 16)
    assert back.cfg.kind == kind and back.cfg.site == SITE
    assert torch.allclose(back(x), sae(x), atol=1e-6)


# --------------------------------------------------------------------------- latents as sites
def test_attached_site_reads_the_latents(m, attached):
    name, sae = attached
    assert name == SITE + ".sae"
    c = m.run("The capital of France is", cache=[SITE, name])
    assert c[name].shape[-1] == 64
    assert torch.allclose(c[name], sae.encode(c[SITE]), atol=1e-5)
    assert site_map(m).canonical("layers.-3.resid_post.sae") == name


def test_latent_edit_changes_the_site_by_the_decoder_row(m, attached):
    name, sae = attached
    after = "layers.2.resid_pre"  # what flows on from the edited site
    prompt = "Keys: k1 red. Query: k1"
    clean = m.run(prompt, cache=[after, name])
    j = int(clean[name][0, -1].argmax())
    assert float(clean[name][0, -1, j]) > 0
    edited = m.run(prompt, cache=[after], interventions=feature_op(m, name, j))
    delta = edited[after] - clean[after]
    expect = -clean[name][..., j, None] * sae.W_dec[j]
    assert torch.allclose(delta, expect, atol=1e-4)
    steered = m.run(prompt, cache=[after], interventions=feature_op(m, name, j, "steer", 2.0))
    assert torch.allclose(steered[after] - clean[after], 2.0 * sae.W_dec[j].expand_as(delta),
                          atol=1e-4)


def test_noop_edit_keeps_the_logits(m, attached):
    name, _ = attached
    clean = m.logits("Review: the plot was good. Sentiment:")
    with m.intervene({name: lambda f: f.clone()}):
        same = m.logits("Review: the plot was good. Sentiment:")
    assert torch.allclose(clean, same, atol=1e-4)


def test_unattached_and_misfit(m):
    with pytest.raises(MethodError, match="no sparse autoencoder is attached"):
        m.run("hi", cache=["layers.0.mlp.out.sae"])
    with pytest.raises(InputError, match="wide"):
        attach(m, random_sae(d_in=64), "layers.0.resid_post")


# --------------------------------------------------------------------------- attribution
@pytest.mark.slow
def test_integrated_gradients_on_latents_complete(m, attached):
    name, sae = attached
    prompt, target = "The capital of France is", " Paris"
    ig = feature_attribution(m, name, prompt, target, method="ig", steps=32)
    atp = feature_attribution(m, name, prompt, target, method="atp")
    ids = m.encode(prompt)
    t = m.encode_target(target)[0]

    def metric(spec):
        with m.intervene(spec):
            return float(torch.log_softmax(m.logits(ids)[0, -1] if m.logits(ids).dim() == 3
                                           else m.logits(ids)[-1], -1)[t])

    full = metric({})
    zeroed = metric({name: lambda f: torch.zeros_like(f)})
    assert ig.shape == atp.shape == (len(ids), 64)
    assert abs(float(ig.sum()) - (full - zeroed)) < 0.05 * max(1.0, abs(full - zeroed))


def test_attribute_feature_explains_the_latent(m, attached):
    name, _ = attached
    prompt = "Keys: k1 red, k2 blue. Query: k2"
    f = m.run(prompt, cache=[name])[name][0, -1]
    j = int(f.argmax())
    a = attribute_feature(m, name, j, prompt, method="occlusion")
    assert a.scores.shape[1] == len(m.encode(prompt)) + 1
    assert abs(float(a.target_scores[0]) - float(f[j])) < 1e-4
    assert "latent" in a.info["explains"]


# --------------------------------------------------------------------------- detectors, CAVs
def test_auroc_per_feature():
    y = np.array([1, 1, 0, 0, 0], dtype=bool)
    x = np.array([[3, 0], [2, 1], [1, 1], [0, 5], [0, 0]], dtype=float)
    auc = auroc_per_feature(x, y)
    assert auc[0] == 1.0
    # positives (0, 1) vs negatives (1, 5, 0): one win (1 > 0) and two ties of 6 pairs
    assert abs(auc[1] - 2 / 6) < 1e-9


def test_cav_points_to_the_concept():
    rng = np.random.default_rng(0)
    concept = rng.normal(size=(40, 8)) + np.r_[3.0, np.zeros(7)]
    rand = rng.normal(size=(40, 8))
    v, acc = train_cav(concept, rand)
    assert acc > 0.9 and v[0] > 0.9
    grads = rng.normal(size=(100, 8))
    grads[:, 0] = np.abs(grads[:, 0]) + 5
    assert tcav_score(grads, v) > 0.95 and tcav_score(grads, -v) < 0.05


# --------------------------------------------------------------------------- views
def _results():
    ev = SAEEval("layers.2.resid_post", "lmxray-tiny", "topk", 64, 100, 8.0, 0.9, 2.0, 2.1, 9.0,
                 0.98, 0.01, 0.02, [-1.0, -2.0])
    fv = FeatureView("layers.2.resid_post.sae", 3,
                     [{"tokens": ["<bos>", " Tues<day>"], "acts": [0.0, 1.5], "max": 1.5, "at": 1}],
                     [0.0, 1.0, 2.0], [3, 1], 0.05, [[" Paris", 1.2]], [[" Rome", -0.7]])
    sc = ConceptScan("layers.2.resid_post.sae", [{"concept": "marker:token", "feature": 3,
                                                  "auroc": 0.97, "positives": 5, "negatives": 9}])
    tc = TCAVResult("layers.2.resid_post", "capitals", [
        {"concept": "Africa", "score": 0.9, "scores": [0.9, 0.9], "random_scores": [0.5, 0.4],
         "p_value": 0.001, "significant": True, "cav_accuracy": 0.95}])
    return [ev, fv, sc, tc]


@pytest.mark.parametrize("i", range(4))
def test_views_and_json(tmp_path, i):
    r = _results()[i]
    html = r.to_html()
    assert "<html" in html and "Tues<day>" not in html
    from rich.console import Console

    con = Console(record=True, width=120)
    r.show(con)
    text = con.export_text()
    assert any(s in text for s in ("CE loss recovered", "top contexts", "AUROC", "TCAV"))
    r.save(tmp_path / "r.json")
    assert type(r).load(tmp_path / "r.json").to_dict() == r.to_dict()


# --------------------------------------------------------------------------- on the zoo model
@pytest.mark.slow
def test_train_on_streamed_zoo_text_and_resume(m, tmp_path):
    from lmxray.concepts import evaluate_sae, train_sae

    cfg = TrainConfig(d_sae=128, k=16, steps=12, batch_tokens=256)
    full = train_sae(m, "layers.2.resid_post", cfg, progress=False)
    assert full.info["tokens"] == 12 * 256 and full.info["texts"] > 0
    ev = evaluate_sae(m, full.sae, n_texts=20)
    assert ev.l0 <= 16 and 0 < ev.fve <= 1 and ev.ce_zero > ev.ce_clean
    assert ev.ce_recovered > 0.5  # 3k tokens already beat zero-ablation by far
    part = train_sae(m, "layers.2.resid_post", TrainConfig(**{**cfg.__dict__, "steps": 12}),
                     progress=False, checkpoint=tmp_path / "ck")
    assert torch.allclose(part.sae.W_dec, full.sae.W_dec, atol=1e-5)  # deterministic stream


@pytest.mark.slow
def test_cli_train_eval_show_tcav(tmp_path):
    import json

    from typer.testing import CliRunner

    from lmxray import cli

    r = CliRunner()
    out = tmp_path / "sae"
    res = r.invoke(cli.app, ["sae", "train", "--site", "layers.1.resid_post", "--out", str(out),
                             "--width", "64", "--k", "8", "--steps", "4", "--batch-tokens", "256",
                             "--eval-texts", "10", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["format"] == "lmxray.sae_eval/1"
    res = r.invoke(cli.app, ["sae", "show", str(out), "--feature", "0", "--n-texts", "30",
                             "--html", str(tmp_path / "f.html")])
    assert res.exit_code == 0, res.output
    assert "top contexts" in (tmp_path / "f.html").read_text()
    res = r.invoke(cli.app, ["tcav", "--site", "layers.1.resid_post", "--continent", "Oceania",
                             "--n-random", "2", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [x["concept"] for x in rows] == ["Oceania", "random"]
