"""Logging a generator file as the run's MLflow model (a pyfunc), for train and import_model.

The model stores no code: its ``loader_module`` is ``components.mlflow_model`` (``LOADER_MODULE``), which
MLflow imports from the installed package when the model is loaded. Apart from that loader, so that
training does not import the inference code (``components/inference/``) to log its model; the input
example is still checked by MLflow at log time, through that loader.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from components.checkpoint import HASH_TAG, MLFLOW_ARTIFACT

HASH_KEY = HASH_TAG  # run tag, logged-model tag and registered-version tag (tracking store only)
MODEL_NAME = "model"  # artifact path / logged-model name inside the training run
LOADER_MODULE = "components.mlflow_model"  # written into every MLmodel: the module path must not move


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
        loader_module=LOADER_MODULE,  # imported from the environment at load time: no code is stored
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


def log_final_model(run_id: str, generator_file: str, image_size: int, epoch: int) -> str:
    """Log the generator as the training run's MLflow model once per generator file and end the run
    FINISHED; returns ``runs:/<id>/model``.

    A rerun of a finished training logs nothing new unless the file changed: a calibration fitted again
    (``train.calibrate_low_bin_max``) gives the same weights another spec, hence another file, which the
    run then records (its hash tag) and ``register`` registers as a version of its own."""
    from components.checkpoint import file_sha256

    client = mlflow.MlflowClient()
    if client.get_run(run_id).data.tags.get(HASH_KEY) != file_sha256(generator_file):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, MLFLOW_ARTIFACT)
            local.write_bytes(Path(generator_file).read_bytes())
            log_generator_model(local, image_size, run_id=run_id)
        client.set_tag(run_id, "model_epoch", str(epoch))
    client.set_terminated(run_id, status="FINISHED")
    return f"runs:/{run_id}/{MODEL_NAME}"
