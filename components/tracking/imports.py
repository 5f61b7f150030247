"""MLflow for ``import_model``: an earlier import of the same file, or a new run with the generator as its
MLflow model and a registered version (components/stages/import_model.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components.checkpoint import MLFLOW_ARTIFACT
from components.tracking import registry
from components.tracking.models import MODEL_NAME, log_generator_model


def earlier_import(experiment: str, digest: str, image_size: int, model_name: str):
    """``(run id, version)`` of an earlier finished import of the same file at the same size that has a
    version of ``model_name``; None when there is none."""
    from components import tracking

    client = mlflow.MlflowClient()
    exp = tracking.get_or_create_experiment(experiment, client)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"{tracking.equals_filter('tags.source_sha256', digest)} and "
        f"{tracking.equals_filter('params.image_size', str(image_size))}",
        order_by=["attributes.start_time ASC"],
    )
    earlier = next((r for r in runs if r.info.status == "FINISHED"), None)
    if earlier is None:
        return None
    version = registry.version_for_run(client, model_name, earlier.info.run_id)
    return (earlier.info.run_id, version) if version else None


def record_import(
    experiment: str, run_name: str, tags: dict, params: dict, write_generator, image_size: int,
    model_name: str, version_tags: dict, describe,
) -> tuple[str, Any, bool]:  # fmt: skip
    """An imported generator as a run (params, tags, the generator as its MLflow model) and a registered
    version of ``model_name`` (tags, ``describe(version)`` as its description); ``write_generator(path,
    run_id)`` writes the file.
    Returns (run id, version, created)."""
    from components import tracking

    client = mlflow.MlflowClient()
    exp = tracking.get_or_create_experiment(experiment, client)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name, tags=tags) as active:
        run_id = active.info.run_id
        mlflow.log_params(params)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, MLFLOW_ARTIFACT)
            write_generator(local, run_id)
            log_generator_model(local, image_size, run_id=run_id)
    version, created = registry.register_run_model(client, model_name, run_id, MODEL_NAME)
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    client.update_model_version(model_name, version.version, description=describe(version.version))
    client.set_tag(run_id, "registered_model", model_name)
    client.set_tag(run_id, "registered_version", str(version.version))
    return run_id, version, created
