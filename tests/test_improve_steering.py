"""Steering vectors: the mean difference against an unpadded per-prompt oracle, the added vector
seen exactly at the site (and nowhere before it), hooks removed even on errors, steered greedy
generation against a hand-written decoding loop, the sweep's invariants, fluency loss against a
manual cross-entropy, and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.hooks import run_with_cache
from lmxray.improve.steering import (
    SteeringSweep,
    SteeringVector,
    lm_loss,
    steer,
    steered_predictions,
    steering_sweep,
    steering_vector,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


POS = ["The capital of France is", "A dog is not a fox.", "great film"]
NEG = [
    "When Mary and John went to the store",
    "bad plot",
    "Berlin is in Germany, Madrid is in Spain",
]


def model(family: str = "llama") -> lmxray.Model:
    hf, tok = build_tiny(family)
    return lmxray.load(model=hf, tokenizer=tok)


def _hooks(m) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.hf.modules())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_vector_is_the_mean_difference(family, site):
    m = model(family)
    v = steering_vector(m, POS, NEG, 1, site=site, batch_size=2)

    def last(p):
        return run_with_cache(m, p, cache=[f"layers.1.{site}"])[f"layers.1.{site}"][0, -1].float()

    want = torch.stack([last(p) for p in POS]).mean(0) - torch.stack([last(p) for p in NEG]).mean(0)
    assert np.allclose(v.vector, want.numpy(), atol=1e-5)
    assert v.layer == 1 and v.site == site and v.norm > 0
    proj = steering_vector(m, POS, NEG, -1, site=site, project=True)
    acts = torch.stack([last(p) for p in POS + NEG]) if proj.layer == 1 else None
    if acts is not None:
        mu = acts.mean(0)
        assert (
            abs(float(torch.as_tensor(proj.vector) @ mu))
            < 1e-3 * float(mu.norm()) * proj.norm + 1e-5
        )


def test_steer_adds_coef_times_vector_at_the_site_only():
    m = model()
    v = steering_vector(m, POS, NEG, 1)
    sites = ["layers.1.resid_pre", "layers.0.resid_post", "layers.0.resid_pre"]
    clean = run_with_cache(m, POS, cache=sites)
    with steer(m, v, 2.5):
        steered = run_with_cache(m, POS, cache=sites)
    mask = clean.attention_mask.bool()
    delta = (steered["layers.1.resid_pre"] - clean["layers.1.resid_pre"])[mask]
    assert torch.allclose(delta, 2.5 * torch.as_tensor(v.vector).expand_as(delta), atol=1e-5)
    for s in sites[1:]:  # upstream of the site nothing changes (layer 1's input == layer 0's output
        if s != "layers.0.resid_post":  # is recorded after the edit at the shared tensor)
            assert torch.equal(steered[s], clean[s])
    assert _hooks(m) == 0
    with steer(m, v, 0.0):
        z = run_with_cache(m, POS, cache=sites[:1])
    assert torch.allclose(z.logits, clean.logits, atol=1e-6)


def test_hooks_are_removed_when_the_block_raises():
    m = model()
    v = steering_vector(m, POS, NEG, 0)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(m, v, 1.0):
            raise RuntimeError("boom")
    assert _hooks(m) == 0
    bad = SteeringVector(vector=np.zeros(7, dtype=np.float32), layer=0)
    with pytest.raises(InputError, match="dimensions"):
        with steer(m, bad, 1.0):
            pass


def test_steered_generation_matches_a_manual_loop():
    m = model()
    v = steering_vector(m, POS, NEG, 1)
    prompt = "The capital of France is"
    with steer(m, v, 8.0):
        got = m.generate_ids(m.encode(prompt), 4)
    # oracle: full recomputation each step (no KV cache), vector added at every position
    ids = m.encode(prompt)
    vec = torch.as_tensor(v.vector)
    out = []
    for _ in range(4):

        def add_hook(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h = h + 8.0 * vec
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        handle = m.hf.model.layers[1].register_forward_pre_hook(add_hook, with_kwargs=True)
        try:
            with torch.no_grad():
                nxt = int(m.hf(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        finally:
            handle.remove()
        if nxt == m.eos_token_id:
            break
        out.append(nxt)
    assert got == out
    with torch.no_grad():
        plain = m.generate_ids(m.encode(prompt), 4)
    assert steered_predictions(m, [prompt])[0] == (plain[0] if plain else m.eos_token_id)


def test_lm_loss_matches_manual_cross_entropy():
    m = model()
    texts = POS + NEG
    total, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([m.encode(t)])
        with torch.no_grad():
            lg = m.hf(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(lg, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    assert lm_loss(m, texts, batch_size=4) == pytest.approx(total / n, rel=1e-5)
    v = steering_vector(m, POS, NEG, 1)
    assert lm_loss(m, texts, v, 0.0) == pytest.approx(total / n, rel=1e-5)
    assert abs(lm_loss(m, texts, v, 500.0) - total / n) > 1e-3


def test_sweep_invariants_and_round_trip(tmp_path):
    m = model()
    prompts = POS + NEG + ["k3=blue k7=red", "The quick brown fox"]
    base = steered_predictions(m, prompts)
    from_tok = m.token_strings([int(np.bincount(base).argmax())])[0]
    to_tok = next(
        m.token_strings([t])[0]
        for t in range(4, 400)
        if m.token_strings([t])[0] != from_tok and m.encode_target(m.token_strings([t])[0]) == [t]
    )
    sw = steering_sweep(
        m,
        POS,
        NEG,
        prompts,
        to_tok,
        from_tok,
        layers=[0, 1],
        coefs=[0.0, 5.0],
        fluency_texts=POS,
        progress=False,
    )
    assert sw.flip.shape == (2, 2) and sw.loss.shape == (2, 2)
    assert (sw.flip[:, 0] == 0).all()  # eligible prompts answer from_tok unsteered
    assert np.allclose(sw.loss[:, 0], sw.loss_unsteered)
    assert sw.n_eligible == int((base == m.encode_target(from_tok)[0]).sum())
    path = tmp_path / "sweep.json"
    sw.save(path)
    back = SteeringSweep.load(path)
    assert np.allclose(back.flip, sw.flip) and back.layers == sw.layers
    sw.to_png(tmp_path / "sweep.png")
    assert "flip" in sw.table()
    v = steering_vector(m, POS, NEG, 1, project=True)
    v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(tmp_path / "v.safetensors")
    assert np.array_equal(w.vector, v.vector) and w.layer == 1 and w.projected


def test_errors():
    m = model()
    with pytest.raises(InputError, match="both sets"):
        steering_vector(m, [], NEG, 0)
    with pytest.raises(InputError, match="out of range"):
        steering_vector(m, POS, NEG, 9)
    with pytest.raises(InputError, match="resid_pre"):
        steering_vector(m, POS, NEG, 0, site="mlp.out")
    with pytest.raises(InputError, match="nothing to flip"):
        steering_sweep(m, POS, NEG, ["great film"], " Paris", " zzzz", progress=False)


def test_steering_png_shows_every_layer_when_lines_coincide():
    """Four layers with the same flip rates and losses: each layer's colour is still drawn (own
    marker, dashes and a sideways offset), and the legend names every layer."""
    import io as _io

    import matplotlib.colors as mcolors
    import matplotlib.image as mpimg

    from lmxray.improve.results import SteeringSweep
    from lmxray.render.improve import _line_styles

    n = 4
    sw = SteeringSweep(layers=list(range(n)), coefs=[0.0, 2.0, 4.0, 8.0],
                       flip=np.tile(np.array([0.0, 0.5, 1.0, 1.0], dtype=np.float32), (n, 1)),
                       loss=np.full((n, 4), 3.0, dtype=np.float32), loss_unsteered=3.0,
                       to_label=" positive", from_label=" negative", n_eligible=10, n_fluency=5)
    styles = _line_styles(n, 8.0)
    assert len({s["marker"] for s in styles}) == n and len({s["offset"] for s in styles}) == n
    assert len({s["ls"] for s in styles}) == n
    png = sw.to_png()
    assert png[:4] == b"\x89PNG"
    img = mpimg.imread(_io.BytesIO(png))[..., :3]
    for panel in (img[:, : img.shape[1] // 2], img[:, img.shape[1] // 2 :]):  # flips, losses
        for i in range(n):
            rgb = np.array(mcolors.to_rgb(f"C{i}"))
            close = (np.abs(panel - rgb).max(-1) < 0.08).sum()
            assert close > 250, (i, close)  # drawn, not hidden under the last line
