"""Item 7: the MLflow model holds no pickle, and a tampered or diverged generator is refused on load and
on register (real MLflow tracking store, real artifact files overwritten on disk)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from components import registry_mlflow as reg
from components.checkpoint import HASH_TAG, CheckpointError, load_generator, save_generator
from components.cli import UserError
from components.config import load_params
from components.mlflow_model import log_generator_model
from components.training import engine
from tests.train.conftest import REPO, TINY


def _generator(seed: int):
    p = load_params(REPO / "params.yaml", [*TINY, f"train.seed={seed}"])
    spec = engine.generator_spec(p.model.generator, 32)
    return engine.build_state(p, spec).generator, spec


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow (sqlite + artifact folder) with one training run whose model is logged."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    artifacts = tmp_path / "artifacts"
    exp = MlflowClient().create_experiment("t", artifact_location=artifacts.as_uri())
    model, spec = _generator(0)
    with mlflow.start_run(experiment_id=exp) as run:
        path = tmp_path / "gen" / "generator.pt"
        save_generator(str(path), model, spec, 32)
        log_generator_model(path, 32)
    yield {"run_id": run.info.run_id, "artifacts": artifacts, "spec": spec, "tmp": tmp_path}
    mlflow.set_tracking_uri(None)


def stored_generator(artifacts: Path) -> Path:
    (path,) = [p for p in artifacts.rglob("generator.pt") if "artifacts" in p.parent.name]
    return path


def test_model_from_code_and_a_tampered_artifact_is_refused_by_every_loader(store):
    # Logged from code: the entry file travels with the model, no pickled wrapper does.
    files = {p.name for p in store["artifacts"].rglob("*") if p.is_file()}
    assert "pyfunc_entry.py" in files
    assert not any(f.endswith((".pkl", ".pickle")) for f in files), files
    mlmodel = next(store["artifacts"].rglob("MLmodel")).read_text()
    assert "python_model.pkl" not in mlmodel and "pyfunc_entry.py" in mlmodel
    assert len(MlflowClient().get_run(store["run_id"]).data.tags[HASH_TAG]) == 64

    uri = f"runs:/{store['run_id']}/model"
    version, created = reg.register_run_model(MlflowClient(), "rainnet", store["run_id"])
    assert created and version.tags[HASH_TAG] == MlflowClient().get_run(store["run_id"]).data.tags[HASH_TAG]
    MlflowClient().set_registered_model_alias("rainnet", "champion", version.version)
    load_generator(uri)  # intact: loads
    load_generator("models:/rainnet@champion")

    # Someone with write access to the artifact store swaps in other (valid) weights.
    other, spec = _generator(1)
    save_generator(str(stored_generator(store["artifacts"])), other, spec, 32)
    for target in (uri, "models:/rainnet@champion", f"models:/rainnet/{version.version}"):
        with pytest.raises(CheckpointError, match=r"is not the one recorded in MLflow \(.*\); refusing to load it"):
            load_generator(target)
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        mlflow.pyfunc.load_model(uri)


def test_register_refuses_a_tampered_or_diverged_model(store):
    path = stored_generator(store["artifacts"])
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v * float("nan") if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}  # fmt: skip
    torch.save(payload, path)
    with pytest.raises(UserError, match="not registered: .*not the one recorded"):
        reg.register_run_model(MlflowClient(), "rainnet", store["run_id"])
    # The same NaN weights with a matching hash (a diverged training, not an attacker): still refused.
    from components.checkpoint import file_sha256

    MlflowClient().set_tag(store["run_id"], HASH_TAG, file_sha256(path))
    with pytest.raises(UserError, match="not registered: the weights are not finite"):
        reg.register_run_model(MlflowClient(), "rainnet", store["run_id"])
    assert MlflowClient().search_model_versions("name = 'rainnet'") == []


def test_save_generator_refuses_non_finite_weights(tmp_path):
    model, spec = _generator(0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(CheckpointError, match="not written: the weights are not finite"):
        save_generator(str(tmp_path / "g.pt"), model, spec, 32)
    assert not (tmp_path / "g.pt").exists()
