"""The generator file of an MLflow model (``runs:/<id>/model``, ``models:/<name>@<alias>``,
``models:/<name>/<version>``, ``models:/m-<id>``), checked before a byte of it is unpickled.

The hash comes from the tracking store only (the run's, logged model's or registered version's tag
``generator_sha256``), never from the artifact store that holds the file: write access to artifacts is not
a way to swap the weights. Paths and ``s3://`` files go to ``components.checkpoint`` unchanged, so
``load_generator`` here is the one reader for every URI a user can name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from components import checkpoint
from components.checkpoint import HASH_TAG, MLFLOW_ARTIFACT, CheckpointError, check_file_hash
from components.storage import Store


def _downloaded_file(uri: str) -> str:
    """Download a ``runs:/`` or ``models:/`` model and return the generator file inside it."""
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except Exception as exc:  # MlflowException, missing run/alias, unreachable server
        raise CheckpointError(f"{uri}: cannot download from MLflow: {exc}") from exc
    if os.path.isfile(local):
        return local
    for candidate in (
        Path(local, "data", MLFLOW_ARTIFACT),  # the model's data (components.pyfunc_loader)
        Path(local, "artifacts", MLFLOW_ARTIFACT),  # models logged from code before it
        Path(local, MLFLOW_ARTIFACT),
    ):
        if candidate.is_file():
            return str(candidate)
    raise CheckpointError(f"{uri}: no {MLFLOW_ARTIFACT} inside the downloaded MLflow model at {local}")


@dataclass(frozen=True)
class ModelRecord:
    """What the tracking store (never the artifact store) says about a ``runs:/`` or ``models:/`` model:
    the training run it comes from and the generator file's sha256 recorded when it was logged."""

    run_id: str | None
    sha256: str | None
    where: str  # what was consulted, for messages: "run <id>", "logged model m-...", "rainnet v3"


def _logged_model_hash(client, model_id: str | None) -> tuple[str | None, str | None]:
    """(source run id, hash tag) of a logged model (``m-...``); Nones when it has neither."""
    if not model_id:
        return None, None
    lm = client.get_logged_model(model_id)
    return lm.source_run_id, (lm.tags or {}).get(HASH_TAG)


def _run_hash(client, run_id: str | None) -> str | None:
    return client.get_run(run_id).data.tags.get(HASH_TAG) if run_id else None


def model_record(uri: str) -> ModelRecord:
    """The tracking store's record of every MLflow model URI form: ``runs:/<id>/model``,
    ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/<name>[/latest]`` and
    ``models:/m-<id>`` (a logged model, the source a registered version points to). A registered
    version's own tag comes first (it keeps the hash of its file whatever the run logs later), then
    its logged model's, then its run's."""
    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].split("/", 1)[0]
            return ModelRecord(run_id, _run_hash(client, run_id), f"run {run_id}")
        ref = uri[len("models:/") :].strip("/").split("/")
        if ref[0].startswith("m-") and len(ref) == 1:
            run_id, digest = _logged_model_hash(client, ref[0])
            return ModelRecord(run_id, digest or _run_hash(client, run_id), f"logged model {ref[0]}")
        if "@" in ref[0]:
            name, alias = ref[0].split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif len(ref) > 1 and ref[1].isdigit():
            mv = client.get_model_version(ref[0], ref[1])
        elif len(ref) == 1 or ref[1] == "latest":
            found = client.search_model_versions(f"name = '{ref[0]}'")
            if not found:
                raise CheckpointError(f"{uri}: no registered model {ref[0]!r} with a version")
            mv = max(found, key=lambda v: int(v.version))
        else:
            raise CheckpointError(f"{uri}: not a model URI this project can check (models:/<name>@<alias>, "
                                  "models:/<name>/<version>, models:/m-<id> or runs:/<id>/model)")  # fmt: skip
        run_id, digest = _logged_model_hash(client, getattr(mv, "model_id", None))
        digest = mv.tags.get(HASH_TAG) or digest or _run_hash(client, mv.run_id)
        return ModelRecord(mv.run_id or run_id, digest, f"{mv.name} v{mv.version}")
    except MlflowException as exc:
        raise CheckpointError(f"{uri}: cannot read its record from MLflow: {exc}") from exc


def recorded_sha256(uri: str) -> str:
    """The generator sha256 the tracking store recorded for a ``runs:/`` or ``models:/`` URI;
    ``CheckpointError`` when it recorded none: an unverifiable file is never loaded."""
    record = model_record(uri)
    if not record.sha256:
        raise CheckpointError(
            f"{uri}: the tracking store has no {HASH_TAG} for {record.where}, so the generator file in "
            "the artifact store cannot be checked; refusing to load it (log the model again with "
            "components.tracking.models.log_generator_model)"
        )
    return record.sha256


def read_payload(uri: str, map_location: str | torch.device = "cpu", store: Store | None = None) -> dict[str, Any]:
    """The generator file's dict from any URI: an MLflow model after its hash check, else
    ``checkpoint.read_payload`` (a path or ``s3://`` through ``store``)."""
    uri = str(uri)
    if not checkpoint.is_mlflow_uri(uri):
        return checkpoint.read_payload(uri, map_location=map_location, store=store)
    expected = recorded_sha256(uri)  # first: an unknown model is not even downloaded
    try:
        data = Path(_downloaded_file(uri)).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{uri}: cannot read the downloaded generator file: {exc}") from exc
    check_file_hash(data, expected, uri)
    return checkpoint.parse_payload(data, uri, map_location)


def load_generator(
    uri: str, map_location: str | torch.device = "cpu", store: Store | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(generator in eval mode, info)`` from any URI (``checkpoint.load_generator``'s result)."""
    payload = read_payload(uri, map_location=map_location, store=store)
    return checkpoint.generator_from_payload(payload, uri, map_location)


def recorded_for_mlmodel(mlmodel: Path | None, where: str, model_name: str) -> str:
    """The hash the tracking store recorded for the model whose ``MLmodel`` file this is (MLflow's loader
    gets a local folder, not a URI). The MLmodel only names the model (its ids); the hash never comes
    from the artifact store."""
    meta = Model.load(str(mlmodel)) if mlmodel else None
    model_id, run_id = getattr(meta, "model_id", None), getattr(meta, "run_id", None)
    if not (model_id or run_id):
        raise CheckpointError(f"{where}: not an MLflow model logged to a tracking store (no run or model id); "
                              "refusing to load an unverifiable generator")  # fmt: skip
    if model_id:
        uri = f"models:/{model_id}"
        source_run = model_record(uri).run_id
        if run_id and source_run and source_run != run_id:
            raise CheckpointError(f"{where}: the MLmodel names run {run_id} but logged model {model_id} comes "
                                  f"from run {source_run}; refusing to load it")  # fmt: skip
    else:
        uri = f"runs:/{run_id}/{model_name}"
    return recorded_sha256(uri)
