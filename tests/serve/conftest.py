"""Fixtures for the serve tests: tiny generators really trained here, and their MLflow training runs.

All of it is built from the builtin photos (``photos``), so a fresh clone runs every serve test; the
shared lalonde set (fixture ``lalonde``, skipped when absent) is an extra tier for a few tests."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import mlflow_uris_kept
from tests.serve import helpers

REPO = Path(__file__).resolve().parents[2]
# The photo the full-resolution harmonize test is made from; the strong model saw other recolourings of it.
HARMONIZE_PHOTO_INDEX = 3
DATASET_HASH = "builtin-serve-tests"  # the dataset_hash tag of the test training runs


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Builtin photos with object masks (``photos/``, ``masks/``) and an iHarmony4-layout test subset of
    the photos the strong model did not see (``helpers.TEST_SUBSET``): the lalonde layout, no shared data."""
    root = helpers.write_builtin_photos(tmp_path_factory.mktemp("builtin"))
    helpers.write_test_subset(root, helpers.photo_ids(root)[helpers.TRAIN_PHOTOS :])
    return root


@pytest.fixture(scope="session")
def test_subset(photos) -> Path:
    return photos / helpers.TEST_SUBSET


@pytest.fixture(scope="session")
def photo_ids(photos) -> list[str]:
    return helpers.photo_ids(photos)


@pytest.fixture(scope="session")
def generators(photos, photo_ids, tmp_path_factory) -> dict[str, dict]:
    """Three generator files at 32x32: ``strong`` (trained 200 steps), ``weak`` (3 steps), ``untrained``.

    All are the product's RainNet saved in the product's checkpoint format. The strong one is trained on
    recolourings of six photos; it is a real, if small, model, and ranks clearly above the others.
    """
    from components.checkpoint import save_generator

    root = tmp_path_factory.mktemp("generators")
    ids = photo_ids[: helpers.TRAIN_PHOTOS]
    out = {}
    for label, steps in (("strong", 200), ("weak", 3), ("untrained", 0)):
        model, spec = helpers.train_tiny_generator(photos, ids, size=32, steps=steps, seed=1)
        path = root / label / "generator.pt"
        path.parent.mkdir()
        save_generator(str(path), model, spec, 32, meta={"placement": spec["placement"], "steps": steps})
        out[label] = {"path": str(path), "spec": spec, "model": model, "steps": steps}
    return out


def log_training_run(generator: dict, experiment: str, data_name: str, tmp: Path, photos: Path | None = None) -> str:
    """What train does: params, per-epoch val metrics and sample grids through the product's logger
    (``RankZeroLogger``; grids from ``photos`` when given), then the generator file (with its run id)
    logged as the MLflow model."""
    import mlflow

    from components import tracking
    from components.checkpoint import save_generator
    from components.tracking.models import log_generator_model
    from components.tracking.training_log import RankZeroLogger
    from components.training.figures import png_bytes, sample_grid

    spec = generator["spec"]
    exp = tracking.get_or_create_experiment(experiment)
    name = tracking.run_name(spec, data_name)
    tags = {"model": spec["name"], "placement": spec["placement"], "dataset_hash": DATASET_HASH}
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params({"train.steps": generator["steps"], "model.generator.ngf": spec["ngf"]})
        logger = RankZeroLogger(mlflow.get_tracking_uri(), run.info.run_id, enabled=True, system_metrics=False)
        rng = np.random.default_rng(generator["steps"])
        for epoch in range(1, 4):  # something to compare side by side in the UI
            val = {"val_fmse": float(500 / (1 + generator["steps"]) + rng.uniform(0, 5))}
            grids = {}
            if photos is not None:
                grids[f"samples/epoch_{epoch:03d}.png"] = png_bytes(sample_grid(*_samples(generator, photos)))
            logger.log_epoch(epoch, val, grids)
        path = tmp / f"{run.info.run_id}" / "generator.pt"
        path.parent.mkdir(parents=True)
        meta = {"run_id": run.info.run_id, "placement": spec["placement"], "dataset_hash": DATASET_HASH}
        save_generator(str(path), generator["model"], spec, 32, meta=meta)
        log_generator_model(str(path), 32)
        return run.info.run_id


def _samples(generator: dict, photos: Path):
    """(composite, mask, output, real) uint8 batches of two recoloured photos through the generator."""
    import torch

    from components.data.images import batch_to_tensor, to_uint8

    comps, masks, reals = helpers.training_set(photos, helpers.photo_ids(photos)[:2], 32, per_photo=1)
    with torch.no_grad():
        out = generator["model"](*batch_to_tensor(comps, masks))
    return comps, masks, to_uint8(out).permute(0, 2, 3, 1).numpy(), reals


@contextlib.contextmanager
def on_server(uri: str):
    """MLflow's tracking and registry URIs (and the variables they export) on ``uri`` inside the block,
    as they were after it: a session fixture that left them set would point every later test, of any
    module, at this server (a test that sets only the tracking URI would register models there)."""
    import mlflow

    with mlflow_uris_kept():
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield


@pytest.fixture(scope="session")
def tracked(mlflow_server, generators, photos, tmp_path_factory) -> dict:
    """The three generators as MLflow training runs on the real server; yields their run ids. A test
    that asks for it runs with MLflow pointed at that server (``_on_tracking_server``)."""
    tmp = tmp_path_factory.mktemp("runs")
    tag = uuid.uuid4().hex[:6]
    with on_server(mlflow_server):
        runs = {
            label: log_training_run(gen, "harmonization-train", f"builtin-{label}-{tag}", tmp, photos)
            for label, gen in generators.items()
        }
    return {"uri": mlflow_server, "runs": runs, "tag": tag}


@pytest.fixture(autouse=True)
def _on_tracking_server(request):
    """Tests of the tracked runs (``runs:/`` URIs, the registry) talk to the server they were logged on;
    the root conftest's ``_mlflow_uris`` puts MLflow back after each."""
    if "tracked" not in request.fixturenames:
        yield
        return
    with on_server(request.getfixturevalue("tracked")["uri"]):
        yield


def run_stage(main, *overrides: str) -> None:
    """Run a stage's ``main`` in-process with the repo's params.yaml and ``-S`` overrides."""
    args = ["--params", str(REPO / "params.yaml")]
    for o in overrides:
        args += ["-S", o]
    assert main(args) == 0


@pytest.fixture(scope="session")
def registry_flow(tracked, test_subset, tmp_path_factory) -> dict:
    """evaluate + register, in the order a team would meet them: a weak model first, then the same run
    again, then a strong model, then an untrained one. Yields every step's register.json."""
    import json

    from pipeline import evaluate, register

    name = f"rainnet-{tracked['tag']}"
    tmp = tmp_path_factory.mktemp("registry")
    steps = {}
    with on_server(tracked["uri"]):
        for step, label in (("first", "weak"), ("again", "weak"), ("better", "strong"), ("worse", "untrained")):
            out = tmp / step
            run_stage(
                evaluate.main,
                f"evaluate.model=runs:/{tracked['runs'][label]}/model",
                f"evaluate.data={test_subset}",
                f"evaluate.per_image_out={out / 'eval.csv'}",
                f"evaluate.summary_out={out / 'eval.json'}",
                f"evaluate.summary_md={out / 'eval.md'}",
                f"evaluate.showcase_out={out / 'showcase.png'}",
            )
            run_stage(
                register.main,
                f"register.model_name={name}",
                f"register.eval_in={out / 'eval.json'}",
                f"register.out={out / 'register.json'}",
                f"register.card_out={out / 'model_card.md'}",
                "register.beat_composite=false",  # this flow checks the champion-vs-challenger rule alone
            )
            steps[step] = {
                "register": json.loads((out / "register.json").read_text()),
                "eval": json.loads((out / "eval.json").read_text()),
                "card": (out / "model_card.md").read_text(),
            }
    return {"name": name, "steps": steps, **tracked}
