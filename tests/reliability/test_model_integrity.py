"""The model store is not trusted (issue 23, items 2 and 3): the MLflow model stores no code and no pickle,
code planted in its artifact folder never runs, and a generator swapped in the artifact store is refused
through every URI form (real MLflow tracking store, real artifact files edited on disk)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from components.checkpoint import HASH_TAG, CheckpointError, save_generator
from components.config import load_params
from components.errors import UserError
from components.stages.evaluate import model_run_id
from components.tracking import registry as reg
from components.tracking.model_files import load_generator
from components.tracking.models import input_example, log_generator_model
from components.training import engine
from tests.train.conftest import REPO, TINY


def _generator(seed: int):
    p = load_params(REPO / "params.yaml", [*TINY, f"train.seed={seed}"])
    spec = engine.generator_spec(p.model.generator, 32)
    return engine.build_state(p, spec).generator, spec


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow (sqlite + artifact folder) with one training run whose model is logged and
    registered as ``rainnet`` v1 @ champion."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    artifacts = tmp_path / "artifacts"
    exp = MlflowClient().create_experiment("t", artifact_location=artifacts.as_uri())
    model, spec = _generator(0)
    with mlflow.start_run(experiment_id=exp) as run:
        path = tmp_path / "gen" / "generator.pt"
        save_generator(str(path), model, spec, 32, meta={"run_id": run.info.run_id})
        info = log_generator_model(path, 32)
    version, created = reg.register_run_model(MlflowClient(), "rainnet", run.info.run_id)
    assert created
    MlflowClient().set_registered_model_alias("rainnet", "champion", version.version)
    yield {"run_id": run.info.run_id, "artifacts": artifacts, "spec": spec, "tmp": tmp_path, "db": uri,
           "model_id": info.model_id, "version": version.version, "file": path}  # fmt: skip


def model_folder(artifacts: Path) -> Path:
    (mlmodel,) = artifacts.rglob("MLmodel")
    return mlmodel.parent


def stored_generator(artifacts: Path) -> Path:
    (path,) = model_folder(artifacts).rglob("generator.pt")
    return path


def uri_forms(store) -> list[str]:
    return [
        f"runs:/{store['run_id']}/model",
        "models:/rainnet@champion",
        f"models:/rainnet/{store['version']}",
        f"models:/{store['model_id']}",  # the version's own source URI
        "models:/rainnet/latest",
    ]


def test_the_model_stores_no_code_and_code_planted_in_its_folder_never_runs(store, tmp_path):
    folder = model_folder(store["artifacts"])
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".py", ".pkl", ".pickle", ".cloudpickle"))], files
    mlmodel = (folder / "MLmodel").read_text()
    flavor = yaml.safe_load(mlmodel)["flavors"]["python_function"]
    assert flavor["loader_module"] == "components.mlflow_model"  # imported from the environment
    assert flavor.get("code") is None and "python_model" not in flavor and "artifacts" not in flavor
    assert HASH_TAG not in mlmodel  # the hash lives in the tracking store only

    # Someone with write access to the artifact store plants code where a loader could look for it.
    marker = tmp_path / "planted-code-ran"
    line = f"open({str(marker)!r}, 'w').write('ran')\n"
    for rel in ("code/components/__init__.py", "code/components/mlflow_model.py", "mlflow_model.py",
                "components/__init__.py", "components/mlflow_model.py", "pyfunc_entry.py", "data/__init__.py"):  # fmt: skip
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(line)
    model = mlflow.pyfunc.load_model("models:/rainnet@champion")  # the path `mlflow models serve` takes
    out = model.predict(input_example(32))
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    assert not marker.exists()


def test_a_swapped_generator_is_refused_through_every_uri_form(store, tmp_path):
    for uri in uri_forms(store):
        load_generator(uri)  # intact: loads
    other, spec = _generator(1)
    save_generator(str(stored_generator(store["artifacts"])), other, spec, 32)  # valid, other weights
    for uri in uri_forms(store):
        with pytest.raises(CheckpointError, match=r"is not the one recorded in MLflow \(.*\); refusing to load it"):
            load_generator(uri)
        with pytest.raises(CheckpointError, match=r"is not the one recorded in MLflow"):
            mlflow.pyfunc.load_model(uri)
    with pytest.raises(UserError, match="not registered: .*not the one recorded"):
        reg.check_registrable(f"models:/{store['model_id']}")

    # The CLI a user runs, through the logged model's own URI: exit 2, nothing written.
    comp = np.full((32, 32, 3), 120, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(comp).save(tmp_path / "c.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.harmonize", str(tmp_path / "c.png"), str(tmp_path / "m.png"),
         "-o", str(tmp_path / "out.png"), "-m", f"models:/{store['model_id']}", "--tracking-uri", store["db"]],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "is not the one recorded in MLflow" in res.stderr and "logged before hashes" not in res.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_model_without_a_recorded_hash_is_refused_not_loaded_with_a_warning(store):
    client = MlflowClient()
    client.delete_tag(store["run_id"], HASH_TAG)
    client.delete_model_version_tag("rainnet", store["version"], HASH_TAG)
    client.delete_logged_model_tag(store["model_id"], HASH_TAG)
    for uri in uri_forms(store):
        with pytest.raises(CheckpointError, match=f"the tracking store has no {HASH_TAG} for .*; refusing"):
            load_generator(uri)
        with pytest.raises(CheckpointError, match=f"the tracking store has no {HASH_TAG}"):
            mlflow.pyfunc.load_model(uri)


def test_evaluate_takes_the_training_run_from_the_tracking_store_not_from_the_file(store, tmp_path):
    _, info = load_generator(str(store["file"]))
    assert model_run_id(str(store["file"]), info) == store["run_id"]  # the run logged this very file
    for uri in uri_forms(store):
        assert model_run_id(uri, {"meta": {"run_id": "forged"}}) == store["run_id"]
    # A file claiming that run, which logged other weights: linked to no run.
    other, spec = _generator(1)
    forged = tmp_path / "forged" / "generator.pt"
    save_generator(str(forged), other, spec, 32, meta={"run_id": store["run_id"]})
    _, info = load_generator(str(forged))
    assert info["meta"]["run_id"] == store["run_id"]
    assert model_run_id(str(forged), info) is None


def test_register_refuses_a_tampered_or_diverged_model(store):
    client = MlflowClient()
    with mlflow.start_run(experiment_id=client.get_run(store["run_id"]).info.experiment_id) as run:
        model, spec = _generator(2)
        path = store["tmp"] / "gen2" / "generator.pt"
        save_generator(str(path), model, spec, 32)
        logged = log_generator_model(path, 32)
    stored = Path(urlparse(client.get_logged_model(logged.model_id).artifact_location).path) / "data" / path.name
    payload = torch.load(stored, weights_only=True)
    payload["state_dict"] = {k: v * float("nan") if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}  # fmt: skip
    torch.save(payload, stored)
    with pytest.raises(UserError, match="not registered: .*not the one recorded"):
        reg.register_run_model(client, "rainnet", run.info.run_id)
    # The same NaN weights with a matching hash (a diverged training, not an attacker): still refused.
    from components.checkpoint import file_sha256

    client.set_tag(run.info.run_id, HASH_TAG, file_sha256(stored))
    client.delete_logged_model_tag(logged.model_id, HASH_TAG)
    with pytest.raises(UserError, match="not registered: the weights are not finite"):
        reg.register_run_model(client, "rainnet", run.info.run_id)
    assert [v.version for v in client.search_model_versions("name = 'rainnet'")] == [store["version"]]


def test_save_generator_refuses_non_finite_weights(tmp_path):
    model, spec = _generator(0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(CheckpointError, match="not written: the weights are not finite"):
        save_generator(str(tmp_path / "g.pt"), model, spec, 32)
    assert not (tmp_path / "g.pt").exists()
