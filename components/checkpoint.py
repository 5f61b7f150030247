"""The generator file (``harmonize-generator/1``): saved by train, loaded by evaluate / register / harmonize.

One self-describing file: the registry spec rebuilds the network, the state dict fills it, strictly, so
weights that do not fit the architecture fail loudly instead of leaving layers at their initial values
(a bug of the authors' code). It can be read from a path, ``s3://``, ``runs:/<id>/model`` or
``models:/<name>@<alias>`` (the last two resolve to the generator file inside the logged MLflow model).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from components import storage

FORMAT = "harmonize-generator/1"
MLFLOW_ARTIFACT = "generator.pt"  # file name inside the MLflow model's artifacts


class CheckpointError(ValueError):
    """A generator file that is missing, of another format, or whose weights do not fit its spec."""


def generator_payload(
    model: torch.nn.Module, spec: dict, image_size: int, meta: dict | None = None
) -> dict[str, Any]:
    """The dict that goes into the file; ``model`` may be wrapped in DDP (its ``module`` is saved)."""
    model = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "spec": dict(spec),
        "image_size": int(image_size),
        "state_dict": state,
        "meta": dict(meta or {}),
    }


def save_generator(
    uri: str,
    model: torch.nn.Module,
    spec: dict,
    image_size: int,
    meta: dict | None = None,
    s3: storage.S3Options | None = None,
) -> dict[str, Any]:
    """Write the generator file atomically to a local path or ``s3://`` URI; returns the payload."""
    payload = generator_payload(model, spec, image_size, meta)
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes_atomic(str(uri), buf.getvalue(), s3=s3)
    return payload


def _mlflow_local_file(uri: str) -> str:
    """Download a ``runs:/`` or ``models:/`` model and return the generator file inside it."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except Exception as exc:  # MlflowException, missing run/alias, unreachable server
        raise CheckpointError(f"{uri}: cannot download from MLflow: {exc}") from exc
    if os.path.isfile(local):
        return local
    for candidate in (
        Path(local, "artifacts", MLFLOW_ARTIFACT),
        Path(local, MLFLOW_ARTIFACT),
    ):
        if candidate.is_file():
            return str(candidate)
    raise CheckpointError(f"{uri}: no {MLFLOW_ARTIFACT} inside the downloaded MLflow model at {local}")


def read_payload(uri: str, map_location: str | torch.device = "cpu", s3=None) -> dict[str, Any]:
    """Read and check the file's dict without building the network."""
    uri = str(uri)
    try:
        if uri.startswith(("runs:/", "models:/")):
            data = Path(_mlflow_local_file(uri)).read_bytes()
        else:
            data = storage.read_bytes(uri, s3=s3)
    except CheckpointError:
        raise
    except (FileNotFoundError, OSError) as exc:
        raise CheckpointError(f"{uri}: cannot read the generator file: {exc}") from exc
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{uri}: not a readable torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{uri}: expected format {FORMAT!r}, got {got!r}")
    for key in ("spec", "image_size", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{uri}: missing key {key!r}")
    return payload


def model_from_payload(payload: dict[str, Any], where: str = "generator") -> torch.nn.Module:
    """Build the network from the spec and load the weights strictly; returns it in eval mode."""
    from components.models.registry import build_model

    try:
        model = build_model(dict(payload["spec"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{where}: cannot build the network from spec {payload['spec']}: {exc}"
        ) from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit spec {payload['spec']}: {exc}") from exc
    return model.eval()


def load_generator(
    uri: str, map_location: str | torch.device = "cpu", s3: storage.S3Options | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(generator in eval mode, info)``; info has ``spec``, ``image_size`` and ``meta``."""
    payload = read_payload(uri, map_location=map_location, s3=s3)
    model = model_from_payload(payload, where=str(uri))
    model.to(map_location)
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["uri"] = str(uri)
    return model, info
