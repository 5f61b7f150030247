"""Import the authors' published RainNet (junleen/RainNet ``net_G_last.pth``) as a tracked, registered model.

The file is read with ``torch.load(weights_only=True)`` (no code in it ever runs), every key is mapped
onto our RainNet and every shape checked (``components.models.authors_keys``); anything else stops with
one line naming the file and the first key that does not fit, before MLflow is touched, so nothing is
registered. A checkpoint that fits becomes what training produces: the generator file, an MLflow run
(experiment ``harmonization-import``) with the generator logged as the project's MLflow model, and a
version of ``rainnet`` tagged ``source=authors``. No alias moves: the promotion rule is ``register``'s,
after ``evaluate`` has scored the version on the champion's test set. Importing the same file at the
same size again registers nothing new. ``pipeline/import_model.py`` is its command line.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from components.checkpoint import save_generator, sha256_hex
from components.errors import UserError
from components.models.authors_keys import AuthorsCheckpointError, convert, spec_for
from components.models.rainnet import check_depth, resolve_placement
from components.storage import Store

log = logging.getLogger("import_model")

FORMATS = ("rainnet-authors",)
EXPERIMENT = "harmonization-import"
SOURCE = "authors"  # the registered version's ``source`` tag
REPOSITORY = "junleen/RainNet"


@dataclass
class Imported:
    """A checked checkpoint: our generator (eval mode), its spec and the source file's sha256."""

    model: torch.nn.Module
    spec: dict
    sha256: str
    image_size: int


def _one_line(exc: Exception) -> str:
    """Torch's unpickling errors run to a page; the line that says what was refused is enough."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported operand" in line:
            return f"a pickle with code, refused: {line.strip().rstrip('.')}"
    return text.splitlines()[0] if text else type(exc).__name__


def load_authors(
    path: str, image_size: int = 256, ngf: int = 64, input_nc: int = 3, placement: str = "rain-decoder",
    store: Store | None = None,
) -> Imported:  # fmt: skip
    """Read and check the authors' state dict at ``path`` (local or ``s3://``); ``UserError`` naming the
    file and the problem when it is not their RainNet of this layout."""
    try:
        check_depth(8, image_size)
    except ValueError:
        raise UserError(
            f"--image-size {image_size}: the authors' network needs a power of two >= 256"
        ) from None
    try:
        data = (store or Store()).read_bytes(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it: {exc}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise UserError(f"{path}: not a weights-only torch file: {_one_line(exc)}") from None
    if isinstance(state, dict) and state.get("format") == "harmonize-generator/1":
        raise UserError(
            f"{path}: already a generator file of this project; use it as it is (no import needed)"
        )
    try:
        ours = convert(state, ngf=ngf, input_nc=input_nc, placement=placement)
    except AuthorsCheckpointError as exc:
        raise UserError(f"{path}: {exc}") from None
    from components.models.registry import build_model

    spec = spec_for(ngf, input_nc, image_size, placement)
    model = build_model(spec)
    model.load_state_dict(ours, strict=True)  # convert() checked every key and shape
    return Imported(model.eval(), spec, sha256_hex(data), int(image_size))


def run(
    path: str, fmt: str = "rainnet-authors", image_size: int = 256, ngf: int = 64, input_nc: int = 3,
    placement: str = "rain-decoder", experiment: str = EXPERIMENT, model_name: str = "rainnet",
    store: Store | None = None,
) -> dict:  # fmt: skip
    """Import ``path`` (MLflow already configured): check it, log the run and model, register a version."""
    from components import tracking
    from components.tracking import imports

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: known formats: {', '.join(FORMATS)}")
    try:
        resolve_placement(placement)
    except ValueError as exc:
        raise UserError(f"--placement: {exc}") from None
    imported = load_authors(path, image_size, ngf, input_nc, placement, store)  # fails before MLflow
    spec, digest = imported.spec, imported.sha256
    earlier = imports.earlier_import(experiment, digest, image_size, model_name)
    if earlier is not None:
        run_id, version = earlier
        log.info("%s was imported already: run %s, %s v%s", path, run_id, model_name, version.version)
        return _result(model_name, version, run_id, digest, spec, created=False)

    source_file = str(path).rstrip("/").rsplit("/", 1)[-1]
    tags = tracking.standard_tags({"model": {"generator": spec}}, None, source=SOURCE, source_format=fmt,
                                  source_sha256=digest, source_file=source_file)  # fmt: skip
    name = f"import-{fmt}-{image_size}"
    params = {
        "source_format": fmt, "file_sha256": digest, "ngf": ngf, "depth": spec["depth"], "image_size": image_size,
        "input_nc": input_nc, "placement": placement, "source_repository": REPOSITORY,
    }  # fmt: skip

    def write_generator(local: Path, run_id: str) -> None:
        meta = {"run_id": run_id, "source": SOURCE, "source_format": fmt, "source_sha256": digest,
                "source_file": source_file}  # fmt: skip
        save_generator(str(local), imported.model, spec, image_size, meta=meta)

    def describe(version: str) -> str:
        return (
            f"RainNet as published by its authors ({REPOSITORY}), imported from {source_file} "
            f"(sha256 {digest[:12]}...) at {image_size}x{image_size}. Not scored here yet: run evaluate on "
            f"models:/{model_name}/{version}, then register, to compare it with the champion."
        )

    run_id, version, created = imports.record_import(
        experiment, name, tags, params, write_generator, image_size, model_name,
        {"source": SOURCE, "source_format": fmt, "source_sha256": digest}, describe,
    )  # fmt: skip
    log.info("imported %s as %s v%s (run %s)", path, model_name, version.version, run_id)
    return _result(model_name, version, run_id, digest, spec, created)


def _result(name: str, version, run_id: str, digest: str, spec: dict, created: bool) -> dict:
    return {
        "name": name,
        "version": int(version.version),
        "new_version": bool(created),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "source": SOURCE,
        "file_sha256": digest,
        "generator": spec,
    }
