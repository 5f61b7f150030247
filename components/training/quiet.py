"""What ``python -m pipeline.train`` prints besides the progress lines: warnings and errors, not the
libraries' start-up and per-report chatter. Each switch is the library's own; a variable the user set
keeps its value (``MLFLOW_LOGGING_LEVEL=INFO python -m pipeline.train`` brings MLflow's lines back).

- Ray Train's ``ray.train`` INFO lines on the console of its controller and workers ("Requesting
  resources", "Started training worker group", "Setting up process group", "Moving model to device",
  "Checkpoint successfully created", "Reporting training result ..."): ``RunConfig(logging_config=
  ray.train.LoggingConfig(log_level="WARNING"))`` (:func:`train_logging`). Its files in the Ray session
  (``logs/train/ray-train-sys-*``) still hold every level.
- Train V2 also hands a worker's ``print`` to its logger, which writes it to stderr next to the
  stdout copy: every progress line reached the terminal twice. ``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` for
  the workers: once, on stdout.
- MLflow's INFO lines (database set-up, "Started monitoring system metrics" on rank 0, "Validating input
  example") and its artifact download bars: ``MLFLOW_LOGGING_LEVEL=WARNING`` and
  ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``, on the driver and the workers. (``cli.QUIET_LOGGERS``
  alone does not hold: importing MLflow sets its logger's level again, from that variable.)
- ``train.reader=ray_data``: Ray Data's progress bars and per-epoch execution lines, off on the
  dataset's own context (:func:`ray_dataset`).
- On a Ray this stage starts itself (no ``RAY_ADDRESS``): token authentication asked for by name
  (``RAY_AUTH_MODE=token``). Ray 2.60 turns it on for a new local Ray anyway and then warns on every
  start that it did ("Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out"); a
  mode set explicitly is respected without that line, and authentication stays on.
- On a Ray this stage starts itself: no preemption watcher
  (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``). It watches for an autoscaler draining a node, which a
  local Ray has not, and its creation printed an error-level line from Ray's core worker (the actor's
  constructor arguments, ray-project/ray#53727) in every training.
"""

from __future__ import annotations

import logging
import os

MLFLOW_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
WORKER_ENV = {**MLFLOW_ENV, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
LOCAL_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # read by the Train controller (driver env)
    "RAY_AUTH_MODE": "token",  # Ray's default for a local Ray, said explicitly: no warning on each start
}
TRAIN_LOG_LEVEL = "WARNING"


def _user_or(defaults: dict[str, str]) -> dict[str, str]:
    return {k: os.environ.get(k) or v for k, v in defaults.items()}


def driver(local_ray: bool) -> None:
    """Quiet this process (the stage's driver): MLflow's level and bars, and, when it starts its own Ray,
    the Train controller's preemption watcher. Call before Ray starts; the user's own settings win."""
    os.environ.update(_user_or({**MLFLOW_ENV, **(LOCAL_RAY_ENV if local_ray else {})}))
    # MLflow reads its level when it is imported, which may have happened already
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


def worker_env() -> dict[str, str]:
    """The same switches for the Ray Train workers' runtime env (they may run on other machines)."""
    return _user_or(WORKER_ENV)


def train_logging():
    """Ray Train's own console level, for ``RunConfig(logging_config=...)``."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=TRAIN_LOG_LEVEL)


def worker() -> None:
    """In each Ray Train worker: Ray 2.60 logs "Reporting training result <n>: TrainingReport(...)" (every
    metric, every epoch) through a logger named after its source file (``getLogger(__file__)`` in
    ``ray.train.v2._internal.execution.context``), outside ``ray.train``, so ``LoggingConfig`` does not
    reach it; that one logger gets the same level here."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: tests/train/test_reproducible.py (its progress test) says if the line is back
        return
    logging.getLogger(context.__file__).setLevel(TRAIN_LOG_LEVEL)


def ray_dataset(ds):
    """Ray Data's own switches on the dataset's context (it travels to the split coordinator that runs
    the read): no progress bars redrawn through the driver's log (hundreds of lines an epoch, ANSI
    cursor moves included) and no "Starting execution of Dataset ..." / "Execution plan" lines per
    epoch. Ray Data says once, as a warning, that its bars are off."""
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds
