"""RRR fine-tuning: the penalty against per-example autograd loops (oracle), its parameter gradient
against finite differences (double backprop), IG completeness, no mutation of the user's model,
bit-exact resumption, HF-format output and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmxray
from conftest import build_tiny
from lmxray.errors import InputError
from lmxray.improve._common import Labelled, as_labelled, target_correct
from lmxray.improve.regularise import (
    FinetuneConfig,
    _collate,
    _encode,
    _penalty_inputs,
    class_token_ids,
    finetune,
    path_attributions,
    rrr_loss,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(family: str = "llama", dtype=torch.float32) -> lmxray.Model:
    hf, tok = build_tiny(family)
    hf = hf.to(dtype)
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    return lmxray.load(model=hf, tokenizer=tok)


DATA = [
    Labelled("The capital of France is", " Paris", irrelevant=(1, 3)),
    Labelled(
        "When Mary and John went to the store, John gave a drink to", " Mary", irrelevant=(2,)
    ),
    Labelled("The quick brown fox", " jumps", irrelevant=()),
    Labelled("Berlin is in Germany, Madrid is in", " Spain and", irrelevant=(5, 6)),
]


def _penalty_loop(m: lmxray.Model, data, class_ids) -> float:
    """Oracle: one unpadded forward and autograd call per example."""
    total = 0.0
    for e in data:
        ids = torch.tensor([m.encode(e.prompt)])
        emb = m.embed(ids)
        logits = m.hf(inputs_embeds=emb).logits[0, -1].float()
        s = torch.log_softmax(logits, -1)[class_ids].sum()
        (g,) = torch.autograd.grad(s, emb)
        total += float(sum(g[0, i].pow(2).sum() for i in e.irrelevant)) if e.irrelevant else 0.0
    return total / len(data)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_penalty_matches_per_example_loop(family):
    m = tiny(family)
    enc = _encode(m, DATA)
    cids, _ = class_token_ids(m, DATA)
    batch = _collate(m, enc)
    _, _, pen = rrr_loss(m, batch, cids, 1.0, attribution="gradient")
    assert float(pen.detach()) > 0
    assert float(pen.detach()) == pytest.approx(_penalty_loop(m, DATA, cids), rel=1e-4)
    # batched equals one row at a time
    single = np.mean(
        [
            float(rrr_loss(m, _collate(m, [e]), cids, 1.0, attribution="gradient")[2].detach())
            for e in enc
        ]
    )
    assert float(pen.detach()) == pytest.approx(single, rel=1e-4)


def test_ce_matches_teacher_forced_loop():
    m = tiny()
    enc = _encode(m, DATA)
    cids, _ = class_token_ids(m, DATA)
    _, ce, _ = rrr_loss(m, _collate(m, enc), cids, 0.0, penalty=False)
    nll, n = 0.0, 0
    for p, t in [(e.prompt_ids, e.target_ids) for e in enc]:
        logits = m.hf(input_ids=torch.tensor([p + t[:-1]])).logits[0, -len(t) :]
        nll += float(
            torch.nn.functional.cross_entropy(logits, torch.tensor(t), reduction="sum").detach()
        )
        n += len(t)
    assert float(ce) == pytest.approx(nll / n, rel=1e-5)


@pytest.mark.parametrize("family,h,rel", [("gpt2", 1e-5, 1e-6), ("llama", 1e-3, 1e-3)])
def test_penalty_parameter_gradient_matches_finite_differences(family, h, rel):
    """Double backprop: d(penalty)/d(theta) along a random direction vs central differences (fp64;
    Llama's RMSNorm computes in float32 even in a float64 model, hence its larger step)."""
    m = tiny(family, dtype=torch.float64)
    enc = _encode(m, DATA[:1])  # one row: no padding (fully masked pad rows are NaN in fp64 eager)
    cids, _ = class_token_ids(m, DATA)
    batch = _collate(m, enc)
    w = next(p for n, p in m.hf.named_parameters() if ".mlp." in n and p.dim() == 2)
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(0), dtype=w.dtype)
    _, _, pen = rrr_loss(m, batch, cids, 1.0, attribution="gradient")
    (g,) = torch.autograd.grad(pen, w)
    analytic = float((g * v).sum())

    def at(shift: float) -> float:
        with torch.no_grad():
            w.add_(shift * v)
        try:
            return float(
                rrr_loss(m, batch, cids, 1.0, attribution="gradient", create_graph=False)[2]
            )
        finally:
            with torch.no_grad():
                w.sub_(shift * v)

    assert analytic != 0
    assert analytic == pytest.approx((at(h) - at(-h)) / (2 * h), rel=rel)


def test_path_attributions_are_complete():
    """The mean of the one-point IG over a fine alpha grid equals log p(x) - log p(x_baseline)."""
    m = tiny(dtype=torch.float64)
    cids, _ = class_token_ids(m, DATA)
    # a token row, not zero: RMSNorm makes the integrand spike near a zero-norm baseline
    base = m.embed(torch.tensor([m.encode_target(" the")[0]]))[0].detach()
    n = 64
    alpha = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # midpoint rule on [0, 1]
    for e in [e for e in DATA if e.irrelevant]:  # one example at a time: no padding in fp64
        # n copies of the example in one batch, one path point each
        grid = _collate(m, _encode(m, [e] * n))
        ig, rows = path_attributions(m, grid, m.embed(grid["input_ids"]), cids, base, alpha,
                                     create_graph=False)
        acc = ig.detach().sum(0, keepdim=True)
        batch = _collate(m, _encode(m, [e]))
        emb = m.embed(batch["input_ids"])

        def logp(embeds, batch=batch):
            out = m.forward(inputs_embeds=embeds, logits_to_keep=batch["targets"].shape[1]).logits
            return torch.log_softmax(out[0, batch["first"][0]], -1)[cids]

        with torch.no_grad():
            irr = batch["irrelevant"][..., None].double()
            delta = logp(emb) - logp(emb * (1 - irr) + base * irr)
        assert rows.tolist() == list(range(n))
        assert torch.allclose(acc[0] / n, delta, rtol=2e-3, atol=2e-4), (acc[0] / n, delta)


def _occlusion_pen(m, enc, cids, baseline="remove") -> torch.Tensor:
    batch = _collate(m, enc)
    cfg = FinetuneConfig(attribution="occlusion", baseline=baseline)
    kw = _penalty_inputs(m, cfg, 0, batch, [7, 8, 9], enc)
    return rrr_loss(m, batch, cids, 1.0, **kw)[2]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_occlusion_penalty_is_the_squared_occlusion_attribution(family):
    """Oracle 1: a loop of unpadded forwards with the marked tokens deleted. Oracle 2: for a
    single marked token, lmxray's own occlusion method (remove mode) per class."""
    m = tiny(family)
    enc = _encode(m, DATA)
    cids, names = class_token_ids(m, DATA)
    pen = float(_occlusion_pen(m, enc, cids).detach())

    def lp(ids):
        logits = m.hf(input_ids=torch.tensor([ids])).logits[0, -1].float()
        return torch.log_softmax(logits, -1)[cids].detach()

    loop = 0.0
    for e in enc:
        if e.irrelevant:
            kept = [t for i, t in enumerate(e.prompt_ids) if i not in e.irrelevant]
            loop += float((lp(e.prompt_ids) - lp(kept)).pow(2).sum())
    assert pen > 0
    assert pen == pytest.approx(loop / len(enc), rel=1e-4)
    one = float(_occlusion_pen(m, [enc[1]], cids).detach())
    (i,) = enc[1].irrelevant
    occ = [float(m.attribute(DATA[1].prompt, target=c, method="occlusion").scores[0, i]) for c in names]
    assert one == pytest.approx(sum(v * v for v in occ), rel=1e-3, abs=1e-9)
    # batched equals one row at a time
    single = np.mean([float(_occlusion_pen(m, [e], cids).detach()) for e in enc])
    assert pen == pytest.approx(single, rel=1e-4)
    # replacement by a fixed token: the loop with that token substituted
    rep = float(_occlusion_pen(m, enc, cids, baseline=5).detach())
    loop = 0.0
    for e in enc:
        if e.irrelevant:
            swapped = [5 if i in e.irrelevant else t for i, t in enumerate(e.prompt_ids)]
            loop += float((lp(e.prompt_ids) - lp(swapped)).pow(2).sum())
    assert rep == pytest.approx(loop / len(enc), rel=1e-4)
    # sampled replacements come from the pool and depend on (seed, step)
    batch = _collate(m, enc)
    kw = _penalty_inputs(m, FinetuneConfig(attribution="occlusion"), 3, batch, [7, 8, 9], enc)
    ids = kw["occluded"]["input_ids"]
    start = ids.shape[1] - len(enc[0].prompt_ids) - len(enc[0].target_ids) + 1  # left padding
    assert {int(ids[0, start + i]) for i in enc[0].irrelevant} <= {7, 8, 9}
    with pytest.raises(InputError, match="occlusion"):
        FinetuneConfig(attribution="gradient", baseline="remove")


@pytest.mark.slow
def test_occlusion_penalty_trains_the_deletion_effect_away():
    m = tiny()
    cfg = FinetuneConfig(steps=25, batch_size=4, lr=3e-3, attribution="occlusion", baseline="remove")
    plain = finetune(m, DATA, lam=0.0, config=cfg, progress=False)
    rrr = finetune(m, DATA, lam=100.0, config=cfg, progress=False)
    cids, _ = class_token_ids(m, DATA)
    enc = _encode(m, DATA)
    with torch.no_grad():
        p_plain = float(_occlusion_pen(plain.model, enc, cids))
        p_rrr = float(_occlusion_pen(rrr.model, enc, cids))
    assert p_rrr < 0.2 * p_plain


def _weights(hf) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


def test_finetune_copies_the_model_and_changes_only_the_copy():
    m = tiny()
    before = _weights(m.hf)
    flags = {k: p.requires_grad for k, p in m.hf.named_parameters()}
    r = finetune(m, DATA, lam=1.0, config=FinetuneConfig(steps=3, batch_size=4), progress=False)
    after = _weights(m.hf)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in m.hf.named_parameters()} == flags
    assert not m.hf.training and not r.model.hf.training
    assert r.model.hf is not m.hf
    changed = [k for k, v in _weights(r.model.hf).items() if not torch.equal(v, before[k])]
    assert changed
    assert r.history and {"step", "ce", "penalty"} <= set(r.history[0])
    assert r.model.hf.config._attn_implementation == m.hf.config._attn_implementation


@pytest.mark.slow
def test_rrr_lowers_the_penalty_on_the_marked_tokens():
    """Axiom of the method: with a large lambda the penalty falls far below a plain run's."""
    m = tiny()
    cfg = FinetuneConfig(steps=25, batch_size=4, lr=3e-3, attribution="gradient")
    plain = finetune(m, DATA, lam=0.0, config=cfg, progress=False)
    rrr = finetune(m, DATA, lam=100.0, config=cfg, progress=False)
    cids, _ = class_token_ids(m, DATA)
    batch = _collate(m, _encode(m, DATA))

    def pen(model):
        with torch.enable_grad():
            return float(
                rrr_loss(model, batch, cids, 1.0, attribution="gradient", create_graph=False)[2]
            )

    assert pen(rrr.model) < 0.2 * pen(plain.model)


def test_resume_is_bit_exact(tmp_path):
    m = tiny()
    cfg = FinetuneConfig(steps=6, batch_size=3, lam=1.0)
    whole = finetune(m, DATA, config=cfg, progress=False)
    out = tmp_path / "run"
    part = finetune(
        m, DATA, config=cfg, out_dir=out, checkpoint_every=2, stop_after=4, progress=False
    )
    assert part.path is None and (out / "checkpoint" / "state.json").exists()
    done = finetune(m, DATA, config=cfg, out_dir=out, checkpoint_every=2, progress=False)
    assert done.info["resumed_from"] == 4
    a, b = _weights(whole.model.hf), _weights(done.model.hf)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in done.history] == [h["step"] for h in whole.history]
    # saved in HF format, checkpoint removed, provenance written
    assert not (out / "checkpoint").exists()
    reloaded = lmxray.load(str(out))
    ids = torch.tensor([m.encode(DATA[0].prompt)])
    with torch.no_grad():
        assert torch.allclose(
            reloaded.hf(input_ids=ids).logits, done.model.hf(input_ids=ids).logits, atol=1e-5
        )
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["format"] == "lmxray.finetune/1" and meta["config"]["lam"] == 1.0


def test_resume_refuses_other_settings(tmp_path):
    m = tiny()
    out = tmp_path / "run"
    finetune(
        m,
        DATA,
        config=FinetuneConfig(steps=4, batch_size=2),
        out_dir=out,
        checkpoint_every=1,
        stop_after=2,
        progress=False,
    )
    with pytest.raises(InputError, match="other settings"):
        finetune(m, DATA, config=FinetuneConfig(steps=4, batch_size=3), out_dir=out, progress=False)
    r = finetune(
        m,
        DATA,
        config=FinetuneConfig(steps=4, batch_size=3),
        out_dir=out,
        resume=False,
        progress=False,
    )
    assert r.info["resumed_from"] == 0 and r.path == out


def test_irrelevant_words_are_marked_from_text():
    m = tiny()
    data = as_labelled(
        [{"prompt": "The capital of France is", "target": " Paris"}], m, irrelevant=["France"]
    )
    ids = m.encode(data[0].prompt)
    assert data[0].irrelevant and all(
        "France" in m.token_strings([ids[i]])[0] or m.token_strings([ids[i]])[0].strip() in "France"
        for i in data[0].irrelevant
    )


def test_errors_are_one_line():
    m = tiny()
    with pytest.raises(InputError, match="no example has tokens marked"):
        finetune(
            m,
            [Labelled("The quick brown fox", " jumps")],
            lam=1.0,
            config=FinetuneConfig(steps=1),
            progress=False,
        )
    with pytest.raises(InputError, match="irrelevant position 40 is outside"):
        finetune(m, [Labelled("The fox", " jumps", irrelevant=(40,))], lam=1.0, progress=False)
    with pytest.raises(InputError, match="steps"):
        FinetuneConfig(steps=0)
    with pytest.raises(InputError, match="attribution"):
        FinetuneConfig(attribution="shap")
    with pytest.raises(InputError, match="lam"):
        FinetuneConfig(lam=-1.0)
    with pytest.raises(InputError, match="empty target"):
        finetune(m, [{"prompt": "The fox", "target": ""}], progress=False)


def test_target_correct_matches_generation():
    m = tiny()
    greedy = []
    for e in DATA:
        text = m.tokenizer.decode(m.generate_ids(m.encode(e.prompt), 2))
        if m.encode_target(text) == m.generate_ids(m.encode(e.prompt), 2):  # round-trips
            greedy.append(Labelled(e.prompt, text))
    assert greedy
    data = greedy + DATA
    got = target_correct(m, data, batch_size=3)
    assert got[: len(greedy)].all()
    for e, g in zip(data, got, strict=True):
        t = m.encode_target(e.target)
        assert g == (m.generate_ids(m.encode(e.prompt), len(t)) == t)
