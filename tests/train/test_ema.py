"""The weight average (``train.ema_decay``): what is validated, kept, saved, resumed and shipped."""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import load_params
from components.training import engine
from tests.train.conftest import REPO, TINY


def params(*extra: str):
    return load_params(REPO / "params.yaml", [*TINY, "train.lr=0.002", *extra])


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    composite = torch.where(mask > 0, (real * 0.6 + 0.3).clamp(-1, 1), real)
    return {"composite": composite, "mask": mask, "real": real}


def build(p):
    return engine.build_state(p, engine.generator_spec(p.model.generator, 32))


def test_the_average_follows_the_torch_ema_formula_and_is_what_validation_and_best_use():
    p = params("train.ema_decay=0.9")
    state = build(p)
    raw = engine.unwrap(state.generator)
    expected = {k: v.detach().clone() for k, v in raw.state_dict().items() if v.is_floating_point()}
    for i in range(3):
        engine.train_step(state, batch(i), p.train, "cpu")
        now = raw.state_dict()
        for k in expected:  # the first update copies the weights, later ones blend them in
            expected[k] = now[k].clone() if i == 0 else 0.9 * expected[k] + 0.1 * now[k]
    avg = engine.eval_generator(state).state_dict()
    assert engine.eval_generator(state) is not raw
    for k, v in expected.items():
        assert torch.allclose(avg[k], v, atol=1e-6), k
    assert any(not torch.equal(avg[k], raw.state_dict()[k]) for k in expected)
    engine.track_best(state, 100.0)
    assert all(torch.equal(state.best["generator"][k], avg[k]) for k in expected)


def test_a_resumed_training_restores_the_average_and_ships_it():
    p = params("train.ema_decay=0.5")
    state = build(p)
    for i in range(2):
        engine.train_step(state, batch(i), p.train, "cpu")
    saved = copy.deepcopy(engine.state_dict(state))
    assert engine.shipped_generator_state(saved) is saved["ema"]
    fresh = build(p)
    engine.load_state_dict(fresh, saved)
    for a, b in zip(fresh.ema.module.state_dict().values(), saved["ema"].values(), strict=True):
        assert torch.equal(a, b)
    # The next update blends into the restored average rather than starting a new one.
    assert int(fresh.ema.n_averaged) == int(state.ema.n_averaged) == 2
    without = build(params())
    assert engine.eval_generator(without) is engine.unwrap(without.generator)
    assert engine.shipped_generator_state(engine.state_dict(without)) is not None
    with pytest.raises(ValueError, match="no weight average"):
        engine.load_state_dict(fresh, engine.state_dict(without))
