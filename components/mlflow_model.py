"""The MLflow model of a trained generator: a pyfunc that takes uint8 arrays and gives uint8 arrays back.

``predict({"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)}) -> uint8 (N, H, W, 3)``: what a user
of ``mlflow.pyfunc.load_model("runs:/<id>/model")`` or ``models:/rainnet@champion`` needs, with no
knowledge of tensors, value ranges or padding. The generator file (``components.checkpoint``) is the
model's one artifact; the ``components`` package travels along as code, so the model loads anywhere
the pip requirements are installed.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from components.checkpoint import MLFLOW_ARTIFACT

ARTIFACT_KEY = "generator"
MODEL_NAME = "model"  # artifact path / logged-model name inside the training run


def _check_inputs(composite: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    composite, mask = np.asarray(composite), np.asarray(mask)
    if composite.ndim == 3:
        composite = composite[None]
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 2:
        mask = mask[None]
    if composite.ndim != 4 or composite.shape[-1] != 3:
        raise ValueError(f"composite: expected uint8 (N, H, W, 3), got shape {composite.shape}")
    if mask.shape != composite.shape[:3]:
        raise ValueError(
            f"mask: expected shape {composite.shape[:3]} to match the composite, got {mask.shape}"
        )
    return composite, mask


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: loads the generator file from the model's artifacts, harmonizes uint8 arrays."""

    def load_context(self, context):
        from components.predictor import Predictor

        self.predictor = Predictor.from_uri(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        """The same ``Predictor`` as ``harmonize`` and ``evaluate``: each image at its native size."""
        if not isinstance(model_input, dict) or not {"composite", "mask"} <= set(model_input):
            raise ValueError('expected {"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)}')
        composite, mask = _check_inputs(model_input["composite"], model_input["mask"])
        return np.stack(self.predictor.predict_batch(list(composite), list(mask)))


def signature():
    """Named uint8 tensors in, one uint8 tensor out; any batch size and image size."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    u8 = np.dtype("uint8")
    return ModelSignature(
        inputs=Schema([TensorSpec(u8, (-1, -1, -1, 3), "composite"), TensorSpec(u8, (-1, -1, -1), "mask")]),
        outputs=Schema([TensorSpec(u8, (-1, -1, -1, 3))]),
    )


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
    components_dir = Path(__file__).resolve().parent
    generator_file = Path(generator_file)
    if generator_file.name != MLFLOW_ARTIFACT:
        raise ValueError(f"{generator_file}: the generator artifact must be named {MLFLOW_ARTIFACT}")
    kwargs = dict(
        name=name,
        python_model=GeneratorModel(),
        artifacts={ARTIFACT_KEY: str(generator_file)},
        code_paths=[str(components_dir)],
        signature=signature(),
        input_example=input_example(image_size),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
    if run_id is None:
        return mlflow.pyfunc.log_model(**kwargs)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        return mlflow.pyfunc.log_model(**kwargs)
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(**kwargs)
