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
``components.checkpoint`` (every ``runs:/`` and ``models:/`` form) check the file against it before
``torch.load(weights_only=True)``, and refuse a file nothing recorded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import torch

from components.checkpoint import HASH_TAG, MLFLOW_ARTIFACT

if TYPE_CHECKING:
    from components.inference.predictor import Predictor

HASH_KEY = HASH_TAG  # run tag, logged-model tag and registered-version tag (tracking store only)
MODEL_NAME = "model"  # artifact path / logged-model name inside the training run


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


def _recorded_for(mlmodel: Path | None, where: str) -> str:
    """The hash the tracking store recorded for the model whose MLmodel this is. The MLmodel only names
    the model (its ids); the hash itself never comes from the artifact store."""
    from mlflow.models import Model

    from components.checkpoint import CheckpointError, model_record, recorded_sha256

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
        uri = f"runs:/{run_id}/{MODEL_NAME}"
    return recorded_sha256(uri)


def _load_pyfunc(data_path: str, model_config=None) -> GeneratorModel:
    """MLflow's entry point (``loader_module``): the generator file checked against the tracking store,
    then loaded with ``weights_only``."""
    from components.checkpoint import check_file_hash, model_from_payload, parse_payload
    from components.inference.predictor import Predictor

    path = Path(data_path)
    if path.is_dir():
        path = path / MLFLOW_ARTIFACT
    expected = _recorded_for(_find_mlmodel(path), str(path))
    data = path.read_bytes()
    check_file_hash(data, expected, str(path))
    payload = parse_payload(data, str(path))
    model = model_from_payload(payload, str(path))
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return GeneratorModel(Predictor.from_generator(model, info))


def signature():
    """One uint8 tensor out, any batch and image size. The input is not declared: it takes two forms
    (``components.inference.serving_io``: uint8 arrays, or base64 image files), and a declared tensor input would
    make MLflow refuse the compact one before ``predict`` sees it; ``predict`` checks either form."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(outputs=Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, 3))]))


def input_example(image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One composite with a centred rectangular foreground, at the training size."""
    rng = np.random.default_rng(seed)
    composite = rng.integers(0, 256, size=(1, image_size, image_size, 3), dtype=np.uint8)
    mask = np.zeros((1, image_size, image_size), dtype=np.uint8)
    q = image_size // 4
    mask[:, q : image_size - q, q : image_size - q] = 255
    return {"composite": composite, "mask": mask}


def pip_requirements() -> list[str]:
    import pyarrow

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pyarrow=={pyarrow.__version__}",
        "pyyaml",
    ]


def log_generator_model(
    generator_file: str | Path,
    image_size: int,
    run_id: str | None = None,
    name: str = MODEL_NAME,
    registered_model_name: str | None = None,
):
    """Log the generator file as a pyfunc model in ``run_id`` (or the active run); returns ModelInfo.

    Loadable afterwards as ``runs:/<run_id>/model``. Requirements are pinned explicitly so MLflow does
    not have to load the model in a subprocess to guess them.
    """
    generator_file = Path(generator_file)
    if generator_file.name != MLFLOW_ARTIFACT:
        raise ValueError(f"{generator_file}: the generator artifact must be named {MLFLOW_ARTIFACT}")
    from components.checkpoint import file_sha256

    digest = file_sha256(generator_file)
    kwargs = dict(
        name=name,
        loader_module=__name__,  # imported from the environment at load time: no code is stored
        data_path=str(generator_file),
        signature=signature(),
        input_example=input_example(image_size),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    target = run_id or (active.info.run_id if active else None)
    if target is None:
        raise ValueError("log_generator_model: no run_id and no active MLflow run")
    client.set_tag(target, HASH_KEY, digest)  # in the tracking store, before MLflow validates the example
    if active is not None and active.info.run_id == target:
        info = mlflow.pyfunc.log_model(**kwargs)
    else:
        with mlflow.start_run(run_id=target):
            info = mlflow.pyfunc.log_model(**kwargs)
    client.set_logged_model_tags(info.model_id, {HASH_KEY: digest})  # this logged model's own record
    return info
