"""The eager engine, the schedule and the generator file, without Ray (fast)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.checkpoint import CheckpointError, load_generator, save_generator
from components.config import load_params
from components.data.dataset import shard_uris
from components.data.shards import ShardDataset
from components.storage import Store
from components.training import engine
from components.training.schedule import lr_factor, make_scheduler
from tests.train.conftest import REPO, TINY, write_tiny_dataset


def tiny_params(root: str, *extra: str):
    return load_params(REPO / "params.yaml", [*TINY, f"storage.root={root}", *extra])


def batches(root: str, split: str = "train", batch_size: int = 4):
    ds = ShardDataset(shard_uris(Store(root), "tiny", split), shuffle=split == "train", even=split == "train")
    return DataLoader(ds, batch_size=batch_size, drop_last=split == "train")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store"))
    write_tiny_dataset(root)
    return root


def test_lr_is_constant_then_decays_linearly_to_zero():
    factors = [lr_factor(e, epochs=3, decay_epochs=3) for e in range(7)]
    assert factors[:3] == [1.0, 1.0, 1.0]
    assert factors[3:6] == pytest.approx([0.75, 0.5, 0.25])
    assert factors[6] == 0.0
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = make_scheduler(opt, 1, 1)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4, 1e-4, 0.0])


@pytest.mark.parametrize(
    "gen", [["model.generator.placement=rain-1"], ["model.generator={name: dih_rain, ngf: 4}"]]
)
def test_gan_step_updates_generator_and_both_discriminators(store, gen):
    params = tiny_params(store, "train.gan=true", "train.gp_weight=10.0", *gen)
    spec = engine.generator_spec(params.model.generator, 32)
    assert spec["image_size"] == 32
    state = engine.build_state(params, spec)
    before = [
        copy.deepcopy(n.state_dict())
        for n in (state.generator, state.discriminator, state.domain_discriminator)
    ]
    logs = engine.train_step(state, next(iter(batches(store))), params.train, "cpu")
    expected = {
        "loss_g",
        "loss_l1",
        "loss_d",
        "loss_d_adv",
        "loss_d_v",
        "loss_d_gp",
        "loss_g_adv",
        "loss_g_v",
    }
    if spec["name"] == "dih_rain":
        expected.add("loss_mask")
    assert set(logs) == expected
    assert all(np.isfinite(v) for v in logs.values())
    for net, old in zip(
        (state.generator, state.discriminator, state.domain_discriminator), before, strict=True
    ):
        changed = [
            k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, old[k])
        ]
        assert changed, f"{type(net).__name__} did not change"
    assert state.global_step == 1


def test_l1_training_lowers_the_training_loss(store):
    # one fixed batch: no flips, re-lighting or identity pairs drawn anew each step
    params = tiny_params(store, "train.lr=0.002", "train.hflip=false", "train.colour_jitter=0",
                         "train.identity_fraction=0")  # fmt: skip
    state = engine.build_state(params, engine.generator_spec(params.model.generator, 32))
    batch = next(iter(batches(store)))
    first = engine.train_step(state, batch, params.train, "cpu")["loss_l1"]
    for _ in range(15):
        last = engine.train_step(state, batch, params.train, "cpu")["loss_l1"]
    assert last < 0.7 * first


def test_validation_counts_every_image_and_matches_the_composite_baseline(store):
    params = tiny_params(store)
    state = engine.build_state(params, engine.generator_spec(params.model.generator, 32))
    sums, samples = engine.validate(state.generator, batches(store, "val", 3), "cpu", keep=2)
    model, composite = sums.means()
    assert sums.count == 8
    assert samples["output"].shape == (2, 32, 32, 3) and samples["output"].dtype == np.uint8
    assert set(model) == {"val_mse", "val_psnr", "val_fmse", "val_fpsnr"}
    # The composite differs from the real image only in the foreground: its MSE is its fMSE x fg share.
    assert 0 < composite["val_mse"] < composite["val_fmse"]
    assert state.generator.training  # validate restores the mode it found


def test_state_dict_round_trip_resumes_exactly(store):
    params = tiny_params(store, "train.gan=true")
    spec = engine.generator_spec(params.model.generator, 32)
    state = engine.build_state(params, spec)
    engine.train_step(state, next(iter(batches(store))), params.train, "cpu")
    engine.end_epoch(state)
    saved = copy.deepcopy(engine.state_dict(state))
    fresh = engine.build_state(params, spec)
    engine.load_state_dict(fresh, saved)
    assert (fresh.epoch, fresh.global_step) == (1, 1)
    for a, b in zip(
        fresh.generator.state_dict().values(), state.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert fresh.opt_d.state_dict()["state"].keys() == state.opt_d.state_dict()["state"].keys()
    l1_only = engine.build_state(tiny_params(store), spec)
    saved_g = engine.state_dict(l1_only)
    with pytest.raises(ValueError, match="no discriminators"):
        engine.load_state_dict(fresh, saved_g)


def test_generator_file_round_trip_and_strict_loading(store, tmp_path):
    params = tiny_params(store)
    spec = engine.generator_spec(params.model.generator, 32)
    state = engine.build_state(params, spec)
    path = tmp_path / "generator.pt"
    save_generator(str(path), state.generator, spec, 32, {"run_id": "abc", "epoch": 3})
    model, info = load_generator(str(path))
    assert not model.training
    assert info["spec"] == spec and info["image_size"] == 32 and info["meta"]["epoch"] == 3
    for a, b in zip(model.state_dict().values(), state.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    broken = tmp_path / "missing.pt"
    torch.save(payload, broken)
    with pytest.raises(CheckpointError, match="missing.pt: weights do not fit"):
        load_generator(str(broken))
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(CheckpointError, match="expected format"):
        load_generator(str(other))
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_generator(str(tmp_path / "nope.pt"))
