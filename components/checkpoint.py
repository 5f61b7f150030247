"""The generator file (``harmonize-generator/1``): saved by train, loaded by evaluate / register / harmonize.

One self-describing file: the registry spec rebuilds the network, the state dict fills it, strictly, so
weights that do not fit the architecture fail loudly instead of leaving layers at their initial values
(a bug of the authors' code). It can be read from a path, ``s3://``, ``runs:/<id>/model`` or
``models:/<name>@<alias>`` (the last two resolve to the generator file inside the logged MLflow model).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components import storage
from components.storage import Store

log = logging.getLogger(__name__)

FORMAT = "harmonize-generator/1"
MLFLOW_ARTIFACT = "generator.pt"  # file name inside the MLflow model's artifacts
# sha256 of the generator file, recorded in the tracking store (run tag at log time, registered-version
# tag at register time): what an artifact-store file is checked against before it is unpickled.
HASH_TAG = "generator_sha256"


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


def nonfinite_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or Inf (a diverged network)."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(v.isfinite().all())]


def save_generator(
    uri: str,
    model: torch.nn.Module,
    spec: dict,
    image_size: int,
    meta: dict | None = None,
    store: Store | None = None,
) -> dict[str, Any]:
    """Write the generator file atomically to a local path or ``s3://`` URI (through ``store``, default
    ``Store()``); returns the payload."""
    payload = generator_payload(model, spec, image_size, meta)
    bad = nonfinite_keys(payload["state_dict"])
    if bad:
        raise CheckpointError(f"{uri}: not written: the weights are not finite ({', '.join(bad[:3])}, ...)")
    buf = io.BytesIO()
    torch.save(payload, buf)
    (store or Store()).write_bytes(str(uri), buf.getvalue())
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
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

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


def check_file_hash(data: bytes, expected: str, uri: str) -> None:
    """``CheckpointError`` unless ``data`` hashes to ``expected`` (the tracking store's record)."""
    got = sha256_hex(data)
    if got != expected:
        raise CheckpointError(
            f"{uri}: the generator file in the artifact store (sha256 {got[:12]}...) is not "
            f"the one recorded in MLflow ({expected[:12]}...); refusing to load it"
        )


def _verified_mlflow_bytes(uri: str) -> bytes:
    """The generator file of an MLflow model, checked against the hash the tracking store recorded."""
    expected = recorded_sha256(uri)  # first: an unknown model is not even downloaded
    data = Path(_mlflow_local_file(uri)).read_bytes()
    check_file_hash(data, expected, uri)
    return data


def read_payload(uri: str, map_location: str | torch.device = "cpu", store: Store | None = None) -> dict[str, Any]:
    """Read and check the file's dict without building the network (MLflow models: hash first)."""
    uri = str(uri)
    try:
        if uri.startswith(("runs:/", "models:/")):
            data = _verified_mlflow_bytes(uri)
        else:
            data = (store or Store()).read_bytes(uri)
    except CheckpointError:
        raise
    except (FileNotFoundError, OSError) as exc:
        raise CheckpointError(f"{uri}: cannot read the generator file: {exc}") from exc
    return parse_payload(data, uri, map_location)


def parse_payload(data: bytes, uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The file's dict from its bytes (``weights_only``: tensors and plain types, no code)."""
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
    uri: str, map_location: str | torch.device = "cpu", store: Store | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(generator in eval mode, info)``; info has ``spec``, ``image_size`` and ``meta``."""
    payload = read_payload(uri, map_location=map_location, store=store)
    model = model_from_payload(payload, where=str(uri))
    model.to(map_location)
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["uri"] = str(uri)
    return model, info


# --------------------------------------------------------------------------------------------------
# Integrity: a sha256 written next to every file at save, checked before a byte of it is unpickled
# --------------------------------------------------------------------------------------------------

HASH_SUFFIX = ".sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_with_hash(directory: str | Path, name: str, data: bytes, store: Store | None = None) -> None:
    """``<directory>/<name>`` and ``<name>.sha256`` (its hex digest), each written atomically through the
    ``Store`` (a local folder or ``s3://``); the hash last, so a file with a hash is a whole file."""
    store = store or Store()
    uri = storage.join(str(directory), name)
    store.write_bytes(uri, data)
    store.write_bytes(uri + HASH_SUFFIX, (sha256_hex(data) + "\n").encode())


def read_verified(uri: str, store: Store | None = None, require_hash: bool = True) -> bytes:
    """The bytes of ``uri`` after checking them against ``<uri>.sha256``; ``CheckpointError`` naming
    the file when it is unreadable or does not match (truncated, overwritten). A file without a hash
    (written before hashes existed) passes unverified unless ``require_hash``."""
    store = store or Store()
    try:
        data = store.read_bytes(uri)
    except OSError as exc:
        raise CheckpointError(f"{uri}: cannot read it: {exc}") from None
    try:
        expected = store.read_bytes(uri + HASH_SUFFIX).decode().strip()
    except (OSError, UnicodeDecodeError) as exc:
        if require_hash:
            raise CheckpointError(f"{uri}: no readable {HASH_SUFFIX} next to it: {exc}") from None
        return data
    got = sha256_hex(data)
    if got != expected:
        raise CheckpointError(
            f"{uri}: sha256 {got[:12]}... does not match the {expected[:12]}... recorded at save "
            f"({len(data)} bytes; truncated or overwritten)"
        )
    return data


def newest_intact(
    root: str, name: str, prefix: str, load: Callable[[bytes], Any], store: Store | None = None
) -> tuple[str | None, Any, list[str]]:
    """The newest ``<root>/<prefix>NNNN/<name>`` that passes its hash and ``load``, by the number in the
    folder name (not by what any tracker recorded last).

    Returns ``(folder uri, load(bytes), problems)``: ``problems`` names every newer file that was
    skipped and why; ``(None, None, problems)`` when no folder holds an intact file.
    """
    store = store or Store()
    try:
        folders = [d for d in store.list_dirs(root) if d.startswith(prefix)]
    except OSError as exc:
        raise CheckpointError(f"{root}: cannot list the checkpoints: {exc}") from None
    pattern = re.compile(re.escape(prefix) + r"(\d+)(?:\.r(\d+))?")  # epoch_0003, a retrained epoch_0003.r1
    found = [(m, d) for d in folders if (m := pattern.fullmatch(d))]
    numbered = sorted(((int(m[1]), int(m[2] or 0)), d) for m, d in found)[::-1]
    problems: list[str] = []
    for _, folder in numbered:
        uri = storage.join(root, folder)
        path = storage.join(uri, name)
        try:
            data = read_verified(path, store, require_hash=False)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        try:
            return uri, load(data), problems
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
            problems.append(f"{path}: cannot be loaded: {exc}")
    return None, None, problems
