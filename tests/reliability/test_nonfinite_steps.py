"""Item 5 in the engine: a NaN / Inf loss is caught where it happens, its step skipped and counted, and
training stops with a clear error when it persists (no Ray: the real engine on real tensors)."""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import load_params
from components.training import engine
from tests.train.conftest import REPO, TINY


def batch(nan: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    comp = (real + 0.3 * mask).clamp(-1, 1)
    if nan:  # one corrupt sample: a NaN pixel inside the object
        comp[0, :, 16, 16] = float("nan")
    return {"composite": comp, "mask": mask, "real": real}


@pytest.mark.parametrize("gan", [False, True])
def test_nan_step_is_skipped_counted_and_persisting_nan_stops(gan):
    p = load_params(REPO / "params.yaml", [*TINY, f"train.gan={str(gan).lower()}", "train.max_nonfinite_steps=3",
                                           "train.colour_jitter=0", "train.identity_fraction=0"])  # fmt: skip
    state = engine.build_state(p, engine.generator_spec(p.model.generator, 32))
    before = copy.deepcopy(state.generator.state_dict())

    assert engine.train_step(state, batch(nan=True), p.train, "cpu") == {}
    assert (state.nonfinite_steps, state.nonfinite_in_a_row, state.global_step) == (1, 1, 1)
    after = state.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the bad step changed nothing
    assert engine.weights_finite(state.generator, state.discriminator, state.domain_discriminator)

    logs = engine.train_step(state, batch(), p.train, "cpu")  # a good step trains and resets the run
    assert logs["loss_g"] > 0 and state.nonfinite_in_a_row == 0 and state.nonfinite_steps == 1
    engine.train_step(state, batch(nan=True), p.train, "cpu")
    engine.train_step(state, batch(nan=True), p.train, "cpu")
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite loss \(NaN/Inf\) in 3 steps in a row.*lower train.lr"):
        engine.train_step(state, batch(nan=True), p.train, "cpu")
    assert state.nonfinite_steps == 4
    assert engine.state_dict(state)["nonfinite_steps"] == 4  # the count travels with the checkpoint
