"""The MLflow model of a trained generator: a pyfunc that takes uint8 arrays and gives uint8 arrays back.

``predict({"composite": uint8 (N, H, W, 3), "mask": uint8 (N, H, W)}) -> uint8 (N, H, W, 3)``: what a user
of ``mlflow.pyfunc.load_model("runs:/<id>/model")`` or ``models:/rainnet@champion`` needs, with no
knowledge of tensors, value ranges or padding. The generator file (``components.checkpoint``) is the
model's one artifact; the ``components`` package travels along as code, so the model loads anywhere
the pip requirements are installed.

Logged as a model *from code* (``components/pyfunc_entry.py``): no pickled Python object is stored, so
writing to the artifact store is not a way to smuggle a pickle into the loader. The generator file's
sha256 is recorded at log time (the model's ``model_config``, and the run tag ``generator_sha256`` in
the tracking store, which ``register`` copies onto the version); ``load_context`` and
``components.checkpoint`` (``runs:/`` and ``models:/`` URIs) check it before ``torch.load``
(``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import torch

from components.checkpoint import HASH_TAG, MLFLOW_ARTIFACT

if TYPE_CHECKING:
    from components.predictor import Predictor

ARTIFACT_KEY = "generator"
HASH_KEY = HASH_TAG  # model_config key, run tag and registered-version tag
ENTRY_FILE = Path(__file__).resolve().with_name("pyfunc_entry.py")
MODEL_NAME = "model"  # artifact path / logged-model name inside the training run


class _Harmonize:
    """``predict``, kept off ``GeneratorModel`` itself: MLflow 3 inspects the ``predict`` a PythonModel
    subclass defines for a type hint to validate inputs against and, finding none, warns on every log and
    load. This model's input, a dict of uint8 arrays, is one MLflow's type hints cannot express (they take
    lists, DataFrames and pydantic models); the tensor signature (``signature()``) says it instead."""

    predictor: Predictor

    def predict(self, context, model_input, params=None):
        """The same ``Predictor`` as ``harmonize`` and ``evaluate``: each image at its native size."""
        from components import serving_io  # the input contract, shared with the served model's clients

        composite, mask = serving_io.parse_input(model_input)
        images = self.predictor.predict_batch(composite, mask)
        return serving_io.format_output(images, compact=serving_io.is_compact(model_input))


class GeneratorModel(_Harmonize, mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: loads the generator file from the model's artifacts, harmonizes uint8 arrays."""

    def load_context(self, context):
        from components.checkpoint import CheckpointError, file_sha256
        from components.predictor import Predictor

        path = context.artifacts[ARTIFACT_KEY]
        expected = (context.model_config or {}).get(HASH_KEY)
        if expected and file_sha256(path) != expected:
            raise CheckpointError(f"{path}: sha256 does not match the {expected[:12]}... recorded when the "
                                  "model was logged; refusing to load it")  # fmt: skip
        self.predictor = Predictor.from_uri(path)


def signature():
    """One uint8 tensor out, any batch and image size. The input is not declared: it takes two forms
    (``components.serving_io``: uint8 arrays, or base64 image files), and a declared tensor input would
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
    components_dir = Path(__file__).resolve().parent
    generator_file = Path(generator_file)
    if generator_file.name != MLFLOW_ARTIFACT:
        raise ValueError(f"{generator_file}: the generator artifact must be named {MLFLOW_ARTIFACT}")
    from components.checkpoint import file_sha256

    digest = file_sha256(generator_file)
    kwargs = dict(
        name=name,
        python_model=str(ENTRY_FILE),
        model_config={HASH_KEY: digest},
        artifacts={ARTIFACT_KEY: str(generator_file)},
        code_paths=[str(components_dir)],
        signature=signature(),
        input_example=input_example(image_size),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
    active = mlflow.active_run()
    if run_id is None or (active is not None and active.info.run_id == run_id):
        info = mlflow.pyfunc.log_model(**kwargs)
    else:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(**kwargs)
    mlflow.MlflowClient().set_tag(info.run_id, HASH_KEY, digest)  # in the tracking store, not the artifacts
    return info
