"""The registry's model over HTTP: MLflow's own scoring app (``/invocations``, ``/ping``), what
``mlflow models serve --env-manager local`` runs, one worker, behind ``serving_io.NestingGuard``."""

from __future__ import annotations

import uvicorn
from mlflow.pyfunc import scoring_server

from components.inference.serving_io import NestingGuard


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> None:
    """Load ``model_uri`` through its pyfunc loader (hash-checked) and answer until stopped."""
    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(model_uri))
    uvicorn.run(NestingGuard(app), host=host, port=port)
