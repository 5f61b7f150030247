"""Fixtures for the serve tests: tiny generators really trained here, and their MLflow training runs."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.serve import helpers

REPO = Path(__file__).resolve().parents[2]
# The photo the full-resolution harmonize test is made from; the strong model saw other recolourings of it.
HARMONIZE_PHOTO_INDEX = 3


@pytest.fixture(scope="session")
def photo_ids(lalonde) -> list[str]:
    return helpers.photo_ids(lalonde)


@pytest.fixture(scope="session")
def generators(lalonde, photo_ids, tmp_path_factory) -> dict[str, dict]:
    """Three generator files at 32x32: ``strong`` (trained 200 steps), ``weak`` (3 steps), ``untrained``.

    All are the product's RainNet saved in the product's checkpoint format. The strong one is trained on
    recolourings of six photos; it is a real, if small, model, and ranks clearly above the others.
    """
    from components.checkpoint import save_generator

    root = tmp_path_factory.mktemp("generators")
    ids = photo_ids[:6]
    out = {}
    for label, steps in (("strong", 200), ("weak", 3), ("untrained", 0)):
        model, spec = helpers.train_tiny_generator(lalonde, ids, size=32, steps=steps, seed=1)
        path = root / label / "generator.pt"
        path.parent.mkdir()
        save_generator(str(path), model, spec, 32, meta={"placement": spec["placement"], "steps": steps})
        out[label] = {"path": str(path), "spec": spec, "model": model, "steps": steps}
    return out


def log_training_run(generator: dict, experiment: str, data_name: str, tmp: Path) -> str:
    """What train does at the end of a run: the generator file (with its run id) logged as the MLflow model."""
    import mlflow

    from components import tracking
    from components.checkpoint import save_generator
    from components.mlflow_model import log_generator_model

    spec = generator["spec"]
    exp = tracking.get_or_create_experiment(experiment)
    name = tracking.run_name(spec, data_name)
    tags = {"model": spec["name"], "placement": spec["placement"], "dataset_hash": "lalonde-test"}
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params({"train.steps": generator["steps"], "model.generator.ngf": spec["ngf"]})
        rng = np.random.default_rng(generator["steps"])
        for epoch in range(3):  # something to compare side by side in the UI
            mlflow.log_metric(
                "val_fmse", float(500 / (1 + generator["steps"]) + rng.uniform(0, 5)), step=epoch
            )
        path = tmp / f"{run.info.run_id}" / "generator.pt"
        path.parent.mkdir(parents=True)
        meta = {"run_id": run.info.run_id, "placement": spec["placement"], "dataset_hash": "lalonde-test"}
        save_generator(str(path), generator["model"], spec, 32, meta=meta)
        log_generator_model(str(path), 32)
        return run.info.run_id


@pytest.fixture(scope="session")
def tracked(mlflow_server, generators, tmp_path_factory) -> dict:
    """The three generators as MLflow training runs on the real server; yields their run ids."""
    import os

    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    tmp = tmp_path_factory.mktemp("runs")
    tag = uuid.uuid4().hex[:6]
    try:
        runs = {
            label: log_training_run(gen, "harmonization-train", f"lalonde-{label}-{tag}", tmp)
            for label, gen in generators.items()
        }
        yield {"uri": mlflow_server, "runs": runs, "tag": tag}
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def run_stage(main, *overrides: str) -> None:
    """Run a stage's ``main`` in-process with the repo's params.yaml and ``-S`` overrides."""
    args = ["--params", str(REPO / "params.yaml")]
    for o in overrides:
        args += ["-S", o]
    assert main(args) == 0


@pytest.fixture(scope="session")
def registry_flow(tracked, lalonde, tmp_path_factory) -> dict:
    """evaluate + register, in the order a team would meet them: a weak model first, then the same run
    again, then a strong model, then an untrained one. Yields every step's register.json."""
    import json

    from pipeline import evaluate, register

    name = f"rainnet-{tracked['tag']}"
    tmp = tmp_path_factory.mktemp("registry")
    steps = {}
    for step, label in (("first", "weak"), ("again", "weak"), ("better", "strong"), ("worse", "untrained")):
        out = tmp / step
        run_stage(
            evaluate.main,
            f"evaluate.model=runs:/{tracked['runs'][label]}/model",
            f"evaluate.data={lalonde / 'LHarmony'}",
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
