"""Interoperability with SAELens (the ``sae-lens`` package as the oracle): our SAE folders load in
SAELens and compute the same latents and reconstructions; SAELens' folders load in lmxray."""

from __future__ import annotations

import pytest
import torch

from lmxray.concepts import SAE, SAEConfig, load_sae

pytestmark = pytest.mark.slow  # importing sae_lens takes seconds



def _ours(kind: str) -> SAE:
    g = torch.Generator().manual_seed(3)
    sae = SAE(SAEConfig(12, 40, kind, 5, site="layers.1.resid_post", model="lmxray-tiny"))
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.log_threshold.fill_(-2.0)
    return sae


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "jumprelu", "relu"])
def test_ours_load_in_saelens(tmp_path, kind):
    from sae_lens import SAE as LensSAE

    ours = _ours(kind)
    ours.save(tmp_path / "s")
    theirs = LensSAE.load_from_disk(str(tmp_path / "s"))
    x = torch.randn(30, 12)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
        assert torch.allclose(theirs.decode(ours.encode(x)), ours.decode(ours.encode(x)), atol=1e-5)
    assert type(theirs).__name__ == {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE",
                                     "jumprelu": "JumpReLUSAE", "relu": "StandardSAE"}[kind]


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_saelens_folders_load_in_lmxray(tmp_path, arch):
    import sae_lens

    cls, cfg_cls = {"topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
                    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
                    "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig)}[arch]
    kw = {"k": 6, "rescale_acts_by_decoder_norm": False} if arch == "topk" else {}
    theirs = cls(cfg_cls(d_in=12, d_sae=40, **kw))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 if name != "threshold"
                    else torch.full(p.shape, 0.1))
    theirs.save_model(str(tmp_path / "s"))
    ours = load_sae(tmp_path / "s")
    assert ours.cfg.kind == {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu"}[arch]
    x = torch.randn(30, 12)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-5)
        assert torch.allclose(ours(x), theirs.decode(theirs.encode(x)), atol=1e-5)
