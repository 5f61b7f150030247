"""The MLflow model of a trained generator: a pyfunc that takes uint8 arrays and gives uint8 arrays back.

``predict({"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)}) -> uint8 (N, H, W, 3)``: what a user
of ``mlflow.pyfunc.load_model("runs:/<id>/model")`` or ``models:/rainnet@champion`` needs, with no
knowledge of tensors, value ranges or padding. The generator file (``components.checkpoint``) is the
model's one stored file (its ``data``).

Nothing stored is code: the model names this module as its ``loader_module``, which MLflow imports from
the environment (the installed ``harmonize-pipeline``, as in ``infra/Dockerfile``), so write access to the
artifact store is not a way to run code in the loader (no pickle, no ``code_paths``). The generator
file's sha256 is recorded in the tracking store only (the run tag and the logged model's tag
``generator_sha256``, copied onto the registered version by ``register``); ``_load_pyfunc`` and
``components.tracking.model_files`` (every ``runs:/`` and ``models:/`` form) check the file against it
before ``torch.load(weights_only=True)``, and refuse a file nothing recorded. This module imports no
MLflow itself: MLflow calls it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from components.checkpoint import MLFLOW_ARTIFACT
from components.tracking.models import MODEL_NAME

if TYPE_CHECKING:
    from components.inference.predictor import Predictor


class GeneratorModel:
    """The pyfunc's model: the same ``Predictor`` as ``harmonize`` and ``evaluate``, each image at its
    native size. A plain class: MLflow wraps what ``_load_pyfunc`` returns and calls its ``predict``."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, model_input, params=None):
        from components.inference import (
            serving_io,  # the input contract, shared with the served model's clients
        )

        composite, mask = serving_io.parse_input(model_input)
        images = self.predictor.predict_batch(composite, mask)
        return serving_io.format_output(images, compact=serving_io.is_compact(model_input))


def _find_mlmodel(path: Path) -> Path | None:
    for d in (path.parent, *path.parents[1:3]):
        if (d / "MLmodel").is_file():
            return d / "MLmodel"
    return None


def _load_pyfunc(data_path: str, model_config=None) -> GeneratorModel:
    """MLflow's entry point (``loader_module``): the generator file checked against the tracking store,
    then loaded with ``weights_only``."""
    from components.checkpoint import check_file_hash, model_from_payload, parse_payload
    from components.inference.predictor import Predictor
    from components.tracking.model_files import recorded_for_mlmodel

    path = Path(data_path)
    if path.is_dir():
        path = path / MLFLOW_ARTIFACT
    expected = recorded_for_mlmodel(_find_mlmodel(path), str(path), MODEL_NAME)
    data = path.read_bytes()
    check_file_hash(data, expected, str(path))
    payload = parse_payload(data, str(path))
    model = model_from_payload(payload, str(path))
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return GeneratorModel(Predictor.from_generator(model, info))
