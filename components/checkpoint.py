"""The generator file (``harmonize-generator/1``): saved by train, loaded by evaluate / register / harmonize.

One self-describing file: the registry spec rebuilds the network, the state dict fills it, strictly, so
weights that do not fit the architecture fail loudly instead of leaving layers at their initial values
(a bug of the authors' code). This module reads it from a path or ``s3://``; the MLflow forms
(``runs:/<id>/model``, ``models:/<name>@<alias>``: the generator file inside the logged MLflow model,
checked against the tracking store's hash) are read by ``components.tracking.model_files``, behind the
MLflow boundary.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from components import storage
from components.storage import Store

log = logging.getLogger(__name__)

FORMAT = "harmonize-generator/1"
MLFLOW_ARTIFACT = "generator.pt"  # file name inside the MLflow model's artifacts
MLFLOW_SCHEMES = ("runs:/", "models:/")  # read by components.tracking.model_files (hash-checked)
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


def check_file_hash(data: bytes, expected: str, uri: str) -> None:
    """``CheckpointError`` unless ``data`` hashes to ``expected`` (the tracking store's record)."""
    got = sha256_hex(data)
    if got != expected:
        raise CheckpointError(
            f"{uri}: the generator file in the artifact store (sha256 {got[:12]}...) is not "
            f"the one recorded in MLflow ({expected[:12]}...); refusing to load it"
        )


def is_mlflow_uri(uri: str) -> bool:
    return str(uri).startswith(MLFLOW_SCHEMES)


def read_payload(uri: str, map_location: str | torch.device = "cpu", store: Store | None = None) -> dict[str, Any]:
    """Read and check the file's dict without building the network: a path or ``s3://`` (MLflow model
    URIs: ``components.tracking.model_files``, which checks the recorded hash first)."""
    uri = str(uri)
    if is_mlflow_uri(uri):
        raise CheckpointError(f"{uri}: an MLflow model URI; components.tracking.model_files reads it "
                              "(checked against the hash the tracking store recorded)")  # fmt: skip
    try:
        data = (store or Store()).read_bytes(uri)
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
    """``(generator in eval mode, info)`` from a path or ``s3://``; info has ``spec``, ``image_size`` and
    ``meta`` (any URI, MLflow's too: ``components.tracking.model_files.load_generator``)."""
    return generator_from_payload(read_payload(uri, map_location=map_location, store=store), uri, map_location)


def generator_from_payload(
    payload: dict[str, Any], uri: str, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``load_generator``'s result from a payload already read."""
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
