"""Driver-side checks that need no Ray: clear errors before launching, train keys, S3 generator files."""

from __future__ import annotations

import pytest

from components.checkpoint import load_generator, save_generator
from components.config import load_params
from components.errors import UserError
from components.stages import train as train_stage
from components.storage import Store
from components.training import engine, launch
from tests.train.conftest import REPO, TINY, write_tiny_dataset


def params(*extra: str):
    return load_params(REPO / "params.yaml", [*TINY, *extra])


def test_missing_shards_are_a_user_error_naming_the_folder(tmp_path):
    p = params(f"storage.root={tmp_path}", "train.dataset=nothing-here")
    with pytest.raises(
        UserError, match=r"datasets/nothing-here: no published dataset.*pipeline\.prepare"
    ):
        launch.check_inputs(p)


def test_too_little_data_for_a_batch_per_worker_fails_before_ray(tmp_path):
    write_tiny_dataset(str(tmp_path), n_train=6, n_val=2)
    p = params(f"storage.root={tmp_path}", "prepare.name=tiny", "train.num_workers=2")
    with pytest.raises(UserError, match="6 training rows cannot fill one batch of 4 per worker on 2 workers"):
        train_stage.run(p)


def test_bad_model_spec_is_a_user_error(tmp_path):
    write_tiny_dataset(str(tmp_path), n_train=8, n_val=2)
    p = params(f"storage.root={tmp_path}", "prepare.name=tiny", "model.generator.ngff=3")
    with pytest.raises(UserError, match="ngff"):
        train_stage.run(p)


def test_train_key_survives_more_epochs_but_not_another_lr():
    spec = {"name": "rainnet", "ngf": 4, "image_size": 32}
    base = launch.fingerprint(params(), spec, "h")
    assert launch.fingerprint(params("train.epochs=50", "train.max_failures=3"), spec, "h") == base
    assert launch.fingerprint(params(f"train.lr={params().train.lr * 2}"), spec, "h") != base
    assert launch.fingerprint(params(), spec, "other-data") != base
    assert launch.fingerprint(params(), {**spec, "ngf": 8}, "h") != base
    assert launch.train_key("rainnet-x", base) == f"rainnet-x-{base[:8]}"


def test_generator_file_on_s3(s3_bucket):
    p = params()
    spec = engine.generator_spec(p.model.generator, 32)
    state = engine.build_state(p, spec)
    uri = f"{s3_bucket}/models/generator.pt"
    save_generator(uri, state.generator, spec, 32, {"epoch": 1}, store=Store())
    model, info = load_generator(uri, store=Store())
    assert info["image_size"] == 32 and info["meta"]["epoch"] == 1
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in state.generator.parameters())
