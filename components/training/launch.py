"""Training as a function: ``train(params) -> TrainResult``.

``train`` checks the inputs, finds or creates the MLflow run and fits a TorchTrainer on the Ray that is
already up; it writes no file of the working tree, so the ``train`` stage (``components/stages/train.py``:
``ray.init``, then ``train``, then the files DVC tracks) and every ablation trial call the same function.

Runs locally (``ray.init()`` starts a Ray sized to the job) or against a cluster (``RAY_ADDRESS``, also
set by ``ray job submit``). Where things go:

- Ray checkpoints: ``<storage.root>/ray/<train key>/`` (local folder or ``s3://``). The train key is the
  run name plus a fingerprint of everything that shapes the trajectory (model, data hash, optimizer,
  batch, seed, workers), so rerunning the same training resumes it, raising ``train.epochs`` continues
  it, and changing e.g. the lr starts a new one instead of loading incompatible weights.
- MLflow: one run per train key (experiment ``train.experiment``), params, tags, metrics, the model.
- The working tree (what DVC tracks): ``train.weights_out``, ``train.metrics_out``, ``train.plots_out``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from components import storage, tracking
from components.config import Params
from components.data.dataset import Dataset, open_dataset
from components.errors import UserError
from components.models import losses
from components.storage import Store
from components.tracking.training_log import (
    RETRY_ENV,
    find_or_create_run,
    record_attempt_failure,
    retry_env,
    run_status,
    tracking_errors,
    training_dataset,
)
from components.training import engine, ingest, quiet
from components.training.loop import STATE_FILE, WorkerConfig, newest_state, train_loop_per_worker
from components.training.preflight import check_cluster_gpus, check_local_gpus

log = logging.getLogger(__name__)

# Settings that may change between a run and its resume without changing what is being trained.
RESUMABLE_KEYS = {
    "run_name", "experiment", "epochs", "decay_epochs", "use_gpu", "cpus_per_worker", "gpus_per_worker",
    "max_failures", "log_every_steps", "sample_grid", "checkpoints_to_keep", "restart_if_damaged", "amp",
    "weights_out", "metrics_out", "plots_out", "keep", "calibrate", "calibrate_low_bin_max",
}  # fmt: skip
# Non-secret settings the workers need when they run on other machines (endpoints, region, tracking).
# Only these go into the Ray runtime env, which Ray writes to world-readable logs and returns from its
# job API: credentials never travel with a job, every node has its own (its environment, a Kubernetes
# Secret, an instance role).
FORWARD_ENV = (
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", *RETRY_ENV,
)  # fmt: skip
FORWARD_ENV_PREFIXES = ("HARMONIZE_",)  # the project's own switches (fault drills, photo index)
# Never forwarded, whatever the lists above say: names that hold credentials.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE|AUTH", re.I)



# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def dataset_name(params: Params) -> str:
    return params.train.dataset or params.prepare.name


def find_shards(ds: Dataset) -> tuple[list[str], list[str]]:
    """Train and val shards of the published dataset, from its verified manifest (the dataset handle)."""
    train, val = (ds.uris(s) for s in ("train", "val"))
    missing = [s for s, u in (("train", train), ("val", val)) if not u]
    if missing:
        raise UserError(
            f"{ds.dir}: no {' and no '.join(missing)} shards ({'/'.join(missing)}-NNNNN.parquet); run "
            "`python -m pipeline.prepare` first, or point train.dataset / storage.root at prepared data"
        )
    return train, val


def image_size_of(ds: Dataset) -> int:
    """The (square) image size of a dataset: its manifest's, which the first val row must have (the
    readers check every row against it); the first row's for a manifest without one."""
    row = next(ds.iter_rows("val", ["height", "width"]))
    if row["height"] != row["width"]:
        uri = ds.uris("val")[0]
        raise UserError(f"{uri}: training expects square images, got {row['width']}x{row['height']}")
    return int(ds.image_size or row["height"])


def fingerprint(params: Params, gen_spec: dict, data_hash: str) -> str:
    """Hash of the settings that shape the trajectory (everything but ``RESUMABLE_KEYS``)."""
    t = {k: v for k, v in params.to_dict()["train"].items() if k not in RESUMABLE_KEYS}
    what = {
        "train": t,
        "generator": gen_spec,
        "discriminators": [params.model.discriminator, params.model.domain_discriminator]
        if t["gan"]
        else None,
        "dataset": [dataset_name(params), data_hash],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def train_key(run_name: str, fp: str) -> str:
    return f"{run_name}-{fp[:8]}"


# --------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------


def train_cpus(params: Params) -> int:
    """The CPUs a local Ray for one training needs: its workers' (not the whole machine); with
    ``train.reader=ray_data`` one more for Ray Data's read / decode tasks beside the workers."""
    t = params.train
    return max(1, t.num_workers * t.cpus_per_worker) + (t.reader == "ray_data")


def start_ray(t, num_cpus: int) -> None:
    """The one Ray start-up of ``train`` and ``ablate``: connect to ``RAY_ADDRESS`` (a cluster, or the one
    ``ray job submit`` runs us in), or start a local Ray with ``num_cpus`` CPUs and a small object store
    (``start_local_ray``). ``t`` is the ``train`` section (GPUs or none)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, logging_level=logging.WARNING)  # start-up chatter off, errors kept
        return
    start_local_ray(num_cpus=num_cpus, num_gpus=None if t.use_gpu else 0)


def preflight(params: Params, section: str, num_cpus: int, start: bool = True) -> None:
    """The one pre-flight of ``train`` and ``ablate``, before any MLflow run exists (a failure leaves
    nothing RUNNING): the GPUs asked for on this machine, the driver's console, then (``start``) Ray
    started or joined and the GPUs asked for in the cluster. ``section`` names the setting in errors."""
    check_local_gpus(params.train, section)
    quiet.driver(local_ray=not os.environ.get("RAY_ADDRESS"))
    if start:
        start_ray(params.train, num_cpus)
        check_cluster_gpus(params.train, section)


# Ray's switch for a single-machine Ray (every listener on 127.0.0.1); a multi-node cluster leaves it unset.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(**init_kwargs) -> str:
    """Start a Ray on this machine that its own processes find by address; returns the address.

    Ray Train's helper actors (the ``PlacementGroupCleaner`` watching the controller) look their Ray up
    with ``RAY_ADDRESS`` or, without it, by scanning for running GCS processes: with a second local Ray
    up (two stages at once, a test suite beside a run) that scan fails and every training printed a
    25-line "Found multiple active Ray instances" traceback. So the GCS gets a port chosen here, and the
    Ray's processes (raylet, workers, actors: they inherit its environment) get ``RAY_ADDRESS`` naming
    it; this process's own environment is left as it was.

    It is a single-machine Ray, so it listens on 127.0.0.1 only. Ray 2.60 swaps a loopback node address
    (``_node_ip_address="127.0.0.1"``, ``ray start --node-ip-address=127.0.0.1``) for the machine's
    network address, and its GCS, raylet, workers and agents then listen on every interface; the one
    switch that keeps 127.0.0.1 is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's "no multi-node
    cluster" mode), read when ``ray`` is imported: set here for the Ray's processes (they inherit it)
    and, for the start, on this process's already imported copy (``ray_constants.ENABLE_RAY_CLUSTER``)."""
    import ray
    from ray._private import ray_constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    pinned = {"RAY_ADDRESS": address, "RAY_GCS_SERVER_PORT": str(port), LOOPBACK_ONLY_ENV: "0"}
    saved = {k: os.environ.get(k) for k in pinned}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(pinned)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",  # start one, whatever RAY_ADDRESS says (it names the one being started)
            object_store_memory=256 * 1024**2,
            log_to_driver=True,  # rank 0 prints the progress lines (components/progress.py)
            logging_level=logging.WARNING,
            **init_kwargs,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster  # the node's address is known now (127.0.0.1)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return address


def forwarded_env() -> dict[str, str]:
    """The allow-listed, non-secret variables of this process for the workers' runtime env; a value
    that is a URL with user info is refused (``UserError``): the allow-list filters names, this
    filters values."""
    from components.credentials import check_no_userinfo, split_tracking_credentials

    split_tracking_credentials()
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in FORWARD_ENV or k.startswith(FORWARD_ENV_PREFIXES)) and not SECRET_NAME.search(k)
    }
    check_no_userinfo(env)
    return env


def scaling_config(t):
    """The Ray Train workers of ``train`` (or one ablation trial's): CPUs and GPUs per worker. A fraction
    of a GPU (``gpus_per_worker: 0.25``) lets Ray pack that many trainings of small networks on one GPU
    (each its own process and CUDA context), so a sweep of small networks is not launch-bound."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)


def make_trainer(
    params: Params, worker: WorkerConfig, key: str, callbacks: list | None = None,
    worker_env: dict[str, str] | None = None,
):  # fmt: skip
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    t = params.train
    store = worker.store
    fs, path = store.filesystem(store.uri("ray"))
    datasets = None
    if t.reader == "ray_data":  # the worker reads it through ray.train.get_dataset_shard("train")
        uris, size = worker.train_uris, worker.image_size
        datasets = {"train": ingest.train_dataset(uris, store, t.seed, size)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker.ray_config(),
        datasets=datasets,
        scaling_config=scaling_config(t),
        run_config=RunConfig(
            name=key,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            worker_runtime_env={
                "env_vars": {**quiet.worker_env(), **retry_env(), **forwarded_env(), **(worker_env or {})}
            },
            callbacks=list(callbacks or []),
            logging_config=quiet.train_logging(),  # Ray Train's per-report INFO lines off the console
        ),
    )


# --------------------------------------------------------------------------------------------------
# Training as a function
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one training run produced; no file in the working tree was written to make it.

    ``history`` has one row per epoch (``CSV_COLUMNS``); ``best`` is the row of the lowest val fMSE and
    ``last`` the last row; ``model_epoch`` is the epoch whose generator ``generator_state`` holds
    (``train.keep``: ``best`` or ``last``). ``checkpoint`` is the Ray checkpoint folder (under
    ``<storage.root>/ray/``) that holds the whole training state.
    """

    run_id: str
    run_name: str
    train_key: str
    experiment: str
    history: list[dict]
    best: dict
    last: dict
    model_epoch: int
    epochs_done: int
    generator_state: dict
    image_size: int
    spec: dict
    dataset: str
    dataset_hash: str
    checkpoint: str
    tags: dict = field(default_factory=dict)


def validate(params: Params) -> None:
    t = params.train
    if t.keep not in ("last", "best"):
        raise UserError(f"train.keep={t.keep!r}: expected last or best")
    if t.reader not in ingest.READERS:
        raise UserError(f"train.reader={t.reader!r}: expected one of {', '.join(ingest.READERS)}")
    if t.loss not in losses.RECONSTRUCTION_LOSSES:
        raise UserError(f"train.loss={t.loss!r}: expected one of {', '.join(losses.RECONSTRUCTION_LOSSES)}")


def resume_report(store: Store, root: str, run_id: str, restart_if_damaged: bool = False) -> str:
    """Say which checkpoint a training resumes from and which damaged ones it skips (the workers pick
    the same: ``loop.newest_state``); returns the MLflow run's status before this attempt."""
    folder, saved, problems = newest_state(root, store)
    for problem in problems:
        log.warning("skipping a damaged checkpoint: %s", problem)
    if saved is not None:
        log.info("resuming from %s (epoch %d)", folder, saved["epoch"])
    status = run_status(run_id)
    if saved is None and damaged_checkpoints(store, root):  # never a silent restart from epoch 1
        if restart_if_damaged:
            log.warning("%s: every checkpoint is damaged; training again from epoch 1 (restart_if_damaged)", root)
            return status
        msg = (
            f"{root}: every checkpoint is damaged ({len(problems)}: {problems[0]}); training would restart "
            "from epoch 1. Restore the checkpoints, or set train.restart_if_damaged=true to train again from "
            "epoch 1"
        )
        record_attempt_failure(run_id, msg, "FAILED" if status == "RUNNING" else None)
        raise UserError(msg)
    return status


def damaged_checkpoints(store: Store, root: str) -> list[str]:
    """The checkpoint folders under ``root`` that hold a state file (a folder without one is an upload
    that never finished, not a damaged checkpoint)."""
    try:
        folders = [d for d in store.list_dirs(root) if d.startswith("epoch_")]
    except OSError:
        return []
    return [d for d in folders if store.exists(storage.join(root, d, STATE_FILE))]


def training_failed(key: str, run_id: str, prior_status: str, exc: Exception) -> Exception:
    """Mark the MLflow run and build the error to raise: a run that had FINISHED before this attempt
    stays FINISHED (its results stand; the failure is a tag); diverged weights are a ``UserError``."""
    reason = next(
        (ln.strip() for ln in str(exc).splitlines() if "not finite" in ln or "non-finite" in ln), ""
    )
    try:
        record_attempt_failure(
            run_id, reason or str(exc).strip().splitlines()[-1], "FINISHED" if prior_status == "FINISHED" else "FAILED"
        )
    except tracking_errors() as tracking_exc:  # the training's own error is the one to report
        log.error("MLflow run %s not marked failed: %s", run_id, str(tracking_exc).splitlines()[0][:200])
    if reason:
        return UserError(f"training {key} stopped: {reason.split('Error: ', 1)[-1]}")
    return RuntimeError(f"training {key} failed (rerun the same command to resume): {exc}")


@dataclass
class Inputs:
    """What a training reads, checked before Ray starts (``check_inputs``): the stage's store, the
    dataset handle and what comes from it."""

    store: Store
    dataset: Dataset
    train_uris: list[str]
    val_uris: list[str]
    image_size: int
    gen_spec: dict


def check_inputs(params: Params) -> Inputs:
    """Shards, one batch per worker, the model spec: ``UserError`` naming what is wrong, no Ray needed."""
    validate(params)
    t = params.train
    store = Store.from_config(params.storage)
    store.check_bucket()
    ds = open_dataset(store.anchored(), dataset_name(params))  # the workers read its shards from their folders
    train_uris, val_uris = find_shards(ds)
    n_train = ds.rows("train")  # the manifest's count, checked against each shard's Parquet footer
    if n_train // t.num_workers < t.batch_size:
        raise UserError(
            f"{ds.dir}: {n_train} training rows cannot fill one batch of {t.batch_size} per worker on "
            f"{t.num_workers} workers"
        )
    image_size = image_size_of(ds)
    try:
        gen_spec = engine.generator_spec(params.model.generator, image_size)
        engine.build_model(gen_spec)
        if t.gan:
            engine.build_model(dict(params.model.discriminator))
            engine.build_model(dict(params.model.domain_discriminator))
    except (ValueError, TypeError) as exc:
        raise UserError(f"params model section: {exc}") from None
    return Inputs(store, ds, train_uris, val_uris, image_size, gen_spec)


def train(
    params: Params,
    *,
    inputs: Inputs | None = None,
    key_prefix: str | None = None,
    tags: dict[str, str] | None = None,
    extra_params: dict[str, Any] | None = None,
    callbacks: list | None = None,
    worker_env: dict[str, str] | None = None,
) -> TrainResult:
    """Train (or resume) one generator as ``params`` say, on the Ray that is already initialized.

    No ``ray.init`` and no stage files: the ``train`` stage (``run``) and every ablation trial call
    this. ``key_prefix`` replaces the run name in the train key (an ablation keys its trials by sweep),
    ``tags`` / ``extra_params`` go on the MLflow run (e.g. ``mlflow.parentRunId``), ``callbacks`` to the
    TorchTrainer's ``RunConfig`` (``TuneReportCallback`` in a Tune trial), ``worker_env`` to the workers.
    Raises ``UserError`` for bad inputs and ``RuntimeError`` when training fails (the MLflow run is then
    marked FAILED; rerunning resumes from the last checkpoint).
    """
    from ray.train import TrainingFailedError

    inputs = inputs or check_inputs(params)
    os.environ.update(retry_env())  # the driver's MLflow calls: a bounded retry budget too
    t = params.train
    store, train_uris, val_uris = inputs.store, inputs.train_uris, inputs.val_uris
    image_size, gen_spec = inputs.image_size, inputs.gen_spec
    data_hash = inputs.dataset.content_hash
    run_name = t.run_name or tracking.run_name(gen_spec, dataset_name(params))
    key = train_key(key_prefix or run_name, fingerprint(params, gen_spec, data_hash))
    uri = tracking.configure()
    run_tags = tracking.standard_tags(params, data_hash, dataset=dataset_name(params), image_size=image_size)
    run_tags["epochs_planned"] = str(t.epochs + t.decay_epochs)
    run_tags.update(tags or {})
    run_id, resumed = find_or_create_run(
        t.experiment, run_name, key, run_tags, params,
        extra_params={"generator_spec": gen_spec, **(extra_params or {})},
        dataset=training_dataset(params, dataset_name(params), data_hash),
    )  # fmt: skip
    log.info("train key %s, MLflow run %s (%s)", key, run_id, "resumed" if resumed else "new")

    workers_store = store.anchored()  # the workers run in folders of their own
    worker = WorkerConfig(
        params=params,
        gen_spec=gen_spec,
        train_uris=train_uris,
        val_uris=val_uris,
        store=workers_store,
        run_id=run_id,
        tracking_uri=uri,
        checkpoint_root=workers_store.uri("ray", key),
        image_size=image_size,
    )
    prior_status = resume_report(store, worker.checkpoint_root, run_id, t.restart_if_damaged)
    trainer = make_trainer(params, worker, key, callbacks=callbacks, worker_env=worker_env)
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise training_failed(key, run_id, prior_status, exc) from exc
    _, state, problems = newest_state(worker.checkpoint_root, store)
    if state is None:
        raise RuntimeError(f"training {key} ended without an intact checkpoint: {'; '.join(problems)}")

    history = state["history"]
    if state["epoch"] > t.epochs + t.decay_epochs:
        log.warning(
            "%s: the checkpoint is already at epoch %d, beyond the %d requested; the outputs are from "
            "epoch %d (set a new train.run_name to train from scratch)",
            key, state["epoch"], t.epochs + t.decay_epochs, state["epoch"],
        )  # fmt: skip
    kept = state.get("best") if t.keep == "best" else None
    model_epoch = kept["epoch"] if kept else state["epoch"]
    if kept:
        log.info(
            "keeping epoch %d (lowest val fMSE %.2f) of %d", model_epoch, kept["val_fmse"], state["epoch"]
        )
    best_row = min(history, key=lambda r: r["val_fmse"])
    return TrainResult(
        run_id=run_id,
        run_name=run_name,
        train_key=key,
        experiment=t.experiment,
        history=history,
        best=best_row,
        last=history[-1],
        model_epoch=model_epoch,
        epochs_done=state["epoch"],
        generator_state=kept["generator"] if kept else engine.shipped_generator_state(state),
        image_size=image_size,
        spec=gen_spec,
        dataset=dataset_name(params),
        dataset_hash=data_hash,
        checkpoint=store.uri("ray", key),
        tags=run_tags,
    )
