"""DIH and DIH + RAIN: norms where the paper puts them, paste-back, mask head, forward/backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.models import RAIN, build_model


def inputs(size=64, batch=2):
    gen = torch.Generator().manual_seed(0)
    comp = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 8:40, 16:48] = 1
    return comp, mask


@pytest.mark.parametrize("name", ["dih", "dih_rain"])
def test_forward_backward_with_mask_head(name):
    g = build_model({"name": name, "ngf": 4, "image_size": 64})
    comp, mask = inputs()
    out, aux = g(comp, mask, return_aux=True)
    assert out.shape == comp.shape and aux["mask_logits"].shape == mask.shape
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out[bg], comp[bg])
    loss = (out - comp.flip(-1)).abs().mean() + nn.functional.binary_cross_entropy_with_logits(
        aux["mask_logits"], mask
    )
    loss.backward()
    bad = [n for n, p in g.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []
    assert torch.is_tensor(g(comp, mask))  # plain call: just the image


def test_norm_layers_follow_the_paper():
    dih = build_model({"name": "dih", "ngf": 4, "image_size": 64})
    rain = build_model({"name": "dih_rain", "ngf": 4, "image_size": 64})
    assert not any(isinstance(m, RAIN | nn.InstanceNorm2d) for m in dih.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in dih.encoder.modules()) == dih.num_blocks - 1
    assert all(not isinstance(m, nn.BatchNorm2d) for m in rain.encoder.modules())
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in rain.encoder.modules()) == rain.num_blocks - 1
    assert sum(isinstance(m, RAIN) for m in rain.decoder.modules()) == rain.num_blocks - 1
    assert not any(isinstance(m, RAIN) for m in rain.mask_decoder.modules())


def test_mask_head_switch_and_eval_determinism():
    g = build_model({"name": "dih_rain", "ngf": 4, "image_size": 32, "mask_head": False}).eval()
    assert g.mask_decoder is None
    comp, mask = inputs(32)
    out, aux = g(comp, mask, return_aux=True)
    assert "mask_logits" not in aux and aux["transform"] is None  # image head: no transform
    assert torch.equal(out, g(comp, mask))


def test_input_size_checks():
    g = build_model({"name": "dih", "ngf": 4, "image_size": 64})
    comp, mask = inputs(64)
    with pytest.raises(ValueError, match="multiple of 16"):
        g(comp[..., :40], mask[..., :40])
    with pytest.raises(ValueError, match="image_size"):
        build_model({"name": "dih", "image_size": 48})
