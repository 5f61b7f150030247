"""Training options that shape what a run learns: the pixel loss, scene colour jitter, keeping the best epoch."""

from __future__ import annotations

import pytest
import torch

from components.models import losses
from components.training import engine
from components.training.augment import scene_colour_jitter


def test_fn_mse_is_the_fmse_metric_on_the_network_range():
    real = torch.zeros(2, 3, 8, 8)
    pred = real.clone()
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :4, :4] = 1  # 16 pixels
    mask[1, :, :, :] = 1  # 64 pixels
    pred[0, :, :4, :4] = 0.5  # every foreground value off by 0.5
    pred[1] = 0.25
    pred[0, :, 6:, 6:] = 1.0  # background errors do not count
    got = losses.fn_mse_loss(pred, real, mask, min_area=1.0)
    assert got.item() == pytest.approx((0.25 + 0.0625) / 2)
    # A tiny object counts as min_area pixels: its loss is damped, never blown up.
    assert losses.fn_mse_loss(pred[:1], real[:1], mask[:1], min_area=64.0).item() == pytest.approx(0.25 / 4)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.reconstruction_loss("l2", pred, real, mask)


def test_scene_colour_jitter_relights_composite_and_real_alike():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    comp = real.clone()
    comp[:, :, 4:12, 4:12] = comp[:, :, 4:12, 4:12] * 0.5 + 0.2  # a recoloured foreground
    jc, jr = scene_colour_jitter(comp, real, 0.5, torch.Generator().manual_seed(1))
    background = torch.ones(16, 16, dtype=torch.bool)
    background[4:12, 4:12] = False
    assert torch.equal(jc[..., background], jr[..., background])  # the background stays identical
    assert not torch.allclose(jr, real, atol=1e-3)  # the scene did change
    assert jc.min() >= -1 and jc.max() <= 1
    same = scene_colour_jitter(comp, real, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(same[0], jc) and torch.equal(same[1], jr)  # seeded: reproducible
    off = scene_colour_jitter(comp, real, 0.0)
    assert off[0] is comp and off[1] is real


def test_track_best_keeps_a_copy_of_the_lowest_validation_epoch():
    net = torch.nn.Linear(2, 2)
    state = engine.TrainState(generator=net, opt_g=None, sched_g=None)
    state.epoch = 1
    assert engine.track_best(state, 500.0)
    kept = state.best["generator"]["weight"].clone()
    with torch.no_grad():
        net.weight.add_(1.0)  # training goes on ...
    state.epoch = 2
    assert not engine.track_best(state, 520.0)  # ... and validation gets worse: the copy stays
    assert state.best["epoch"] == 1 and torch.equal(state.best["generator"]["weight"], kept)
    state.epoch = 3
    assert engine.track_best(state, 480.0)
    assert state.best["epoch"] == 3 and torch.equal(state.best["generator"]["weight"], net.weight)


def test_identity_pairs_replace_a_fraction_of_composites_by_their_real():
    from components.training.augment import identity_pairs

    g = torch.Generator().manual_seed(0)
    real = torch.rand(400, 3, 2, 2, generator=g)
    comp = real + 0.5
    out = identity_pairs(comp, real, 0.25, torch.Generator().manual_seed(3))
    same = (out == real).flatten(1).all(1)
    kept = (out == comp).flatten(1).all(1)
    assert bool((same | kept).all())  # each pair is either left as it was or made an identity pair
    assert 0.15 < same.float().mean().item() < 0.35
    assert identity_pairs(comp, real, 0.0) is comp
