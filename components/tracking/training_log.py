"""MLflow for training: the driver finds or creates the run, rank 0 logs into it, resumes never duplicate.

A training is identified by its *train key* (run name + a fingerprint of the settings that shape the
trajectory, see ``launch.train_key``), stored as the tag ``train_key``. Rerunning the same key reopens the
same MLflow run. Metrics are logged with explicit steps, apart by prefix so the UI groups and plots them
apart: per-step losses as ``train/<loss>`` at the global step, per-epoch metrics (``val_*``, ``lr``,
throughput) at the epoch. The epoch's sample grid goes through ``log_image`` (key ``samples``, step =
epoch; the UI's image charts slide through epochs) and as ``samples.png`` at the run's root (the
latest, one name in every run, so the run compare page shows two runs' grids side by side). On a
resume rank 0 first reads how far the run already got, then skips what is already there: a crash
between checkpointing and logging cannot produce two values for one step, and the epochs a checkpoint
holds but the run lacks are logged from the checkpoint's history.

A tracking outage does not stop training. MLflow's own HTTP retries are bounded (``RETRY_ENV``; a value
the user set wins), and a call that still fails keeps its values in rank 0's buffer: training goes on,
the buffer is sent at the next epoch that finds the server answering, and whatever is still unsent when
training ends is named in one error line (the checkpoints hold it: rerunning the same command logs it).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from components import tracking

log = logging.getLogger(__name__)

TRAIN_KEY_TAG = "train_key"
STEP_PREFIX = "train/"  # per-step losses: train/loss_g at the global step
STEP_METRIC = STEP_PREFIX + "loss_g"  # its history tells how many steps were logged
EPOCH_METRIC = "val_fmse"  # its history tells how many epochs were logged
SAMPLES_DIR = "samples/"  # epoch artifacts under it are image grids: logged with log_image
SAMPLES_KEY = "samples"  # the image key (one image per epoch step)
LATEST_SAMPLES = "samples.png"  # the latest grid at the run's root, common to every training run
SYSTEM_METRICS_INTERVAL_S = 5.0
# MLflow's HTTP retry budget (its defaults: 7 retries, backoff factor 2, a 120 s timeout: minutes per
# call against a dead server, which stalled training for about 10 minutes an epoch). A few seconds per
# call against a refused connection; the buffer, not the retries, carries an outage.
RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def retry_env() -> dict[str, str]:
    """``RETRY_ENV`` with the user's own values where set (for the driver's and the workers' env)."""
    return {k: os.environ.get(k) or v for k, v in RETRY_ENV.items()}


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking call raises when the server is away: MLflow's error after its retries, or the
    connection error of ``requests`` underneath."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.exceptions.RequestException, ConnectionError, TimeoutError)


def find_or_create_run(
    experiment: str,
    run_name: str,
    key: str,
    tags: dict[str, str],
    params,
    extra_params: dict | None = None,
    dataset: dict[str, Any] | None = None,
) -> tuple[str, bool]:
    """``(run_id, resumed)``: the run tagged ``train_key == key`` in ``experiment``, else a new one.

    Params are the flattened ``prepare`` / ``model`` / ``train`` sections (what shaped the run); on a
    resume only keys not yet logged are added (MLflow params are immutable; the settings allowed to
    change between resumes, like ``train.epochs``, keep their first value there and the current one is
    in the run's ``epochs_planned`` tag). ``dataset`` (``name``, ``digest``, ``source``, optional
    ``profile``) is logged as the run's training input.
    """
    client = MlflowClient()
    exp = tracking.get_or_create_experiment(experiment, client)
    run = tracking.find_latest_run(exp, tracking.equals_filter(f"tags.{TRAIN_KEY_TAG}", key), client)
    tags = {**tags, TRAIN_KEY_TAG: key}
    if run is not None:
        run_id, resumed = run.info.run_id, True
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    else:
        run_id, resumed = (
            client.create_run(exp.experiment_id, run_name=run_name, tags=tags).info.run_id,
            False,
        )
    tracking.log_params_flat(tracking.run_params(params), run_id=run_id, on_conflict="keep", client=client)
    if dataset and not resumed:
        tracking.log_dataset_input(run_id, client=client, context="training", **dataset)
    if extra_params:
        tracking.log_params_flat(extra_params, run_id=run_id, on_conflict="keep", client=client)
    return run_id, resumed


def training_dataset(params, name: str, digest: str) -> dict[str, Any]:
    """The run input for dataset ``name``: the prepare manifest DVC tracks when it describes this
    dataset, else the shard folder under ``storage.root``; the card's content hash as digest."""
    from components.data import shards
    from components.storage import Store

    manifest = Path(params.prepare.manifest)
    if name == params.prepare.name and manifest.is_file():
        source = str(manifest.resolve())
    else:
        source = shards.dataset_dir(Store.from_config(params.storage).root, name)
    return {"name": name, "digest": digest, "source": source, "profile": {"content_hash": digest}}


def last_step(client: MlflowClient, run_id: str, metric: str) -> int:
    """Largest step logged for ``metric`` in the run (-1 when none)."""
    history = client.get_metric_history(run_id, metric)
    return max((m.step for m in history), default=-1)


class RankZeroLogger:
    """Logs one worker's view into an existing run; a no-op object on ranks other than 0.

    ``log_system_metrics`` reopens the run as the process's active run with MLflow's system-metrics
    monitor (CPU, memory, GPU when present, sampled every few seconds). Every value goes through a
    buffer that is sent while the server answers (see the module doc); until its first answer the
    logger does not know how far the run got, so what it holds is checked against the run then.
    """

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool, system_metrics: bool = True):
        self.enabled = enabled
        self.run_id = run_id
        if not enabled:
            return
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.system_metrics = system_metrics
        self.connected = False
        self.done_step = self.done_epoch = -1
        self._active = None
        self._pending: list[tuple[str, int, Any]] = []  # (kind, step, payload), in logging order
        self._outage_since: int | None = None  # the first epoch whose values stayed in the buffer
        self._connect()

    # -- the connection -------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Read how far the run got and reopen it; False (and a warning) when the server does not answer."""
        try:
            self.done_step = last_step(self.client, self.run_id, STEP_METRIC)
            self.done_epoch = last_step(self.client, self.run_id, EPOCH_METRIC)
            if self.system_metrics and self._active is None:
                if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
                    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
                self._active = mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
            elif not self.system_metrics:
                self.client.update_run(self.run_id, status="RUNNING")
        except tracking_errors() as exc:
            self._offline(exc)
            return False
        self.connected = True
        return True

    def _offline(self, exc: BaseException) -> None:
        if self.connected or not self._warned:
            log.warning(
                "MLflow at %s does not answer (%s); training goes on and rank 0 keeps the metrics until "
                "it does", self.tracking_uri, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            )  # fmt: skip
            self._warned = True
        self.connected = False

    _warned = False

    def flush(self) -> bool:
        """Send what the buffer holds, oldest first; False when something is left (server away)."""
        if not self.enabled:
            return True
        if not self.connected and not self._connect():
            return False
        while self._pending:
            kind, step, payload = self._pending[0]
            try:
                if kind == "epoch" and step > self.done_epoch:
                    self._send_epoch(step, *payload)
                    self.done_epoch = step
                elif kind == "step" and step > self.done_step:
                    self._log(payload, step)
                    self.done_step = step
            except tracking_errors() as exc:
                self._offline(exc)
                return False
            self._pending.pop(0)
        if self._outage_since is not None:
            log.warning("MLflow answers again: the metrics kept since epoch %d are logged", self._outage_since)
            self._outage_since = None
            self._warned = False
        return True

    def pending_epochs(self) -> list[int]:
        return [step for kind, step, _ in self._pending if kind == "epoch"] if self.enabled else []

    # -- what the loop calls --------------------------------------------------------------------------
    def _log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 500])

    def log_step(self, step: int, losses: dict[str, float]) -> None:
        """Losses as ``train/<name>`` at the global step (apart from the per-epoch curves). While the
        server is away they wait in the buffer for the epoch's end (no retries at every step)."""
        if not self.enabled or (self.connected and step <= self.done_step):
            return
        self._pending.append(("step", step, {STEP_PREFIX + k: v for k, v in losses.items()}))
        if self.connected:
            self.flush()

    def log_epoch(
        self, epoch: int, values: dict[str, float], artifacts: dict[str, bytes] | None = None
    ) -> bool:
        """Log one epoch's metrics (step = epoch) and files (``{"plots/convergence.png": bytes}``);
        PNGs under ``samples/`` are image grids, logged as the ``samples`` image at step ``epoch``.

        Returns False when this epoch is already in the run, or is kept in the buffer (server away).
        """
        if not self.enabled or (self.connected and epoch <= self.done_epoch):
            return False
        self._pending.append(("epoch", epoch, (dict(values), dict(artifacts or {}))))
        if self.flush():
            return True
        if self._outage_since is None:
            self._outage_since = epoch
        return False

    def _send_epoch(self, epoch: int, values: dict[str, float], artifacts: dict[str, bytes]) -> None:
        for name, data in artifacts.items():
            if name.startswith(SAMPLES_DIR) and name.endswith(".png"):
                self.log_samples(epoch, data)
            else:
                self.log_bytes(name, data)
        self._log(values, epoch)  # last: the epoch metric says the epoch is complete

    def log_samples(self, epoch: int, png: bytes) -> None:
        """The epoch's sample grid: image ``samples`` at step ``epoch``, and ``samples.png`` (latest)."""
        from PIL import Image

        self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), key=SAMPLES_KEY, step=epoch)
        self.log_bytes(LATEST_SAMPLES, png)

    def log_bytes(self, artifact_file: str, data: bytes) -> None:
        if not self.enabled:
            return
        path = Path(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, path.name)
            local.write_bytes(data)
            parent = path.parent.as_posix()
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)

    def close(self, status: str = "FINISHED", checkpoints: str = "") -> None:
        """Send what is left and end the run (``FINISHED``, or ``FAILED`` when training raised). With
        the server still away, one error line names the epochs not logged; it never raises: the
        training's result does not depend on the tracker."""
        if not self.enabled:
            return
        if not self.flush():
            log.error(
                "MLflow at %s still does not answer at the end of training: epoch(s) %s of run %s are not "
                "logged. The checkpoints%s are intact and hold them: rerun the same command once MLflow "
                "answers and they are logged (the training is not repeated)",
                self.tracking_uri, ", ".join(map(str, self.pending_epochs())) or "-", self.run_id,
                f" under {checkpoints}" if checkpoints else "",
            )  # fmt: skip
        try:
            if self._active is not None:
                mlflow.end_run(status=status)
                self._active = None
            elif self.connected:
                self.client.set_terminated(self.run_id, status=status)
        except tracking_errors() as exc:
            log.error("MLflow run %s not marked %s: %s", self.run_id, status, str(exc).splitlines()[0][:200])


def run_status(run_id: str) -> str:
    """The training run's status (before an attempt: a FINISHED run's results stand)."""
    return MlflowClient().get_run(run_id).info.status


def record_attempt_failure(run_id: str, error: str, status: str | None = "FAILED") -> None:
    """An attempt's error on the training run (tag ``last_attempt_error``), and the run ended with
    ``status`` (None: left as it is)."""
    client = MlflowClient()
    client.set_tag(run_id, "last_attempt_error", error[:500])
    if status:
        client.set_terminated(run_id, status=status)
