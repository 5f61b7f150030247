"""The Ray Train worker function: data per rank, DDP, per-epoch validation, checkpoint, report.

Every worker runs :func:`train_loop_per_worker`. It restores the latest checkpoint when Ray has one
(a restart after a failure, or a rerun of the same training), then for each remaining epoch: trains
on its own part of the shards, validates on its part of the val split (sums all-reduced, so every rank
sees the same numbers), and calls ``ray.train.report`` with the metrics and, from rank 0, a checkpoint
of the whole training state. Rank 0 alone talks to MLflow.

Fault injection for tests and drills: ``HARMONIZE_FAULT_AFTER_EPOCH=N`` makes the workers raise right
after epoch N is reported, but only in a worker group that started without a checkpoint, so the
restarted (or rerun) training goes through. ``HARMONIZE_PAUSE_AFTER_EPOCH=N`` (same condition) makes them
wait there until they are stopped: a drill that then kills a node or the driver finds the training
still running however fast the epochs go, and the restarted (or rerun) training goes through.
``HARMONIZE_GATE_DIR=<folder>`` makes rank 0, after each epoch is checkpointed and logged (or kept for
a tracker that does not answer), write ``<folder>/epoch_N.done`` and wait for ``<folder>/epoch_N.go``: a
drill (a tracking server stopped and started again) acts between two epochs, whatever their speed.

Each epoch is checkpointed first, then logged: a tracking outage can delay the log, never the
checkpoint (``components/tracking/training_log.py``). A resume logs the epochs its checkpoint holds that the run lacks.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from components.checkpoint import newest_intact, write_with_hash
from components.config import Params
from components.data.shards import ShardDataset
from components.progress import Progress
from components.storage import Store
from components.tracking.training_log import RankZeroLogger
from components.training import cuda, engine, figures, ingest, quiet

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
NONFINITE_METRIC = "nonfinite_steps"  # MLflow: steps skipped so far because a loss was NaN / Inf
FAULT_ENV = "HARMONIZE_FAULT_AFTER_EPOCH"
PAUSE_ENV = "HARMONIZE_PAUSE_AFTER_EPOCH"
GATE_ENV = "HARMONIZE_GATE_DIR"
WORKER_KEY = "worker"  # Ray Train hands each worker a dict: the WorkerConfig is its one entry


@dataclass
class WorkerConfig:
    """What every Ray Train worker of one training needs; ``launch.train`` builds it."""

    params: Params
    gen_spec: dict
    train_uris: list[str]
    val_uris: list[str]
    store: Store
    run_id: str
    tracking_uri: str
    checkpoint_root: str  # absolute: each worker runs in a working folder of its own
    image_size: int | None  # every training row must be this size (the readers check each one)

    def ray_config(self) -> dict:
        """The ``train_loop_config`` Ray Train passes to :func:`train_loop_per_worker`."""
        return {WORKER_KEY: self}


def checkpoint_dir_name(epoch: int, taken: set[str] | frozenset = frozenset()) -> str:
    """``epoch_0003``; ``epoch_0003.r1`` (``.r2``, ...) when that folder already exists from an earlier
    attempt (a damaged checkpoint being redone): Ray deletes old checkpoints by its own record, and a
    reused name would have it delete the new one."""
    name, k = f"epoch_{epoch:04d}", 0
    while (f"{name}.r{k}" if k else name) in taken:
        k += 1
    return f"{name}.r{k}" if k else name


def read_state(directory: str | Path, map_location="cpu") -> dict:
    """The training state saved in a Ray checkpoint directory."""
    return torch.load(Path(directory, STATE_FILE), map_location=map_location, weights_only=True)


def newest_state(
    root: str, store: Store | None = None, map_location="cpu"
) -> tuple[str | None, dict | None, list[str]]:
    """``(folder, state, problems)``: the newest ``epoch_NNNN`` checkpoint under ``root`` (the run's Ray
    folder) whose ``state.pt`` matches the sha256 written at save and loads; by epoch on disk, not by
    what Ray recorded last (a killed driver may not have recorded its last checkpoints). ``problems``
    names the newer files that were skipped."""

    def load(data: bytes) -> dict:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)

    return newest_intact(root, STATE_FILE, "epoch_", load, store)


def check_weights(state: engine.TrainState) -> None:
    """On every rank before a checkpoint (DDP keeps the weights equal, so all ranks stop together):
    weights that are not finite are never saved."""
    nets = (state.generator, state.discriminator, state.domain_discriminator)
    if not engine.weights_finite(*nets):
        raise engine.NonFiniteLossError(
            f"the weights are not finite after epoch {state.epoch}; no checkpoint written (lower train.lr)"
        )


def save_state(state: engine.TrainState, directory: str) -> None:
    """``state.pt`` and its sha256 (checked on resume) into ``directory``."""
    buf = io.BytesIO()
    torch.save(engine.state_dict(state), buf)
    write_with_hash(directory, STATE_FILE, buf.getvalue())


def report_checkpoint(state: engine.TrainState, row: dict, rank: int, name: str, device) -> None:
    """``ray.train.report`` with rank 0's checkpoint. On CUDA the upload runs in the background (Ray
    deletes the local folder once uploaded), so the GPU does not wait on storage; on CPU it happens
    inside the call, in a temporary folder removed after it."""
    import ray.train

    mode = cuda.upload_mode(device)
    if mode == ray.train.CheckpointUploadMode.SYNC:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_state(state, tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ckpt, checkpoint_dir_name=name)
        return
    ckpt = None
    if rank == 0:
        tmp = tempfile.mkdtemp(prefix="harmonize-ckpt-")
        save_state(state, tmp)
        ckpt = ray.train.Checkpoint.from_directory(tmp)
    ray.train.report(
        row, checkpoint=ckpt, checkpoint_dir_name=name, checkpoint_upload_mode=mode,
        delete_local_checkpoint_after_upload=True,
    )  # fmt: skip


def make_loaders(config: WorkerConfig, rank: int, world: int, device="cpu"):
    t = config.params.train
    size = config.image_size  # each row is checked against it before its PNGs are decoded
    opts = cuda.loader_options(t, device)  # CPU: no workers, no pinning (as before)
    train_ds = ShardDataset(
        config.train_uris, hflip=t.hflip, rank=rank, world_size=world, seed=t.seed, store=config.store,
        image_size=size,
    )  # fmt: skip
    val_ds = ShardDataset(
        config.val_uris,
        rank=rank,
        world_size=world,
        seed=t.seed,
        store=config.store,
        shuffle=False,
        even=False,
        image_size=size,
    )
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, drop_last=True, **opts)
    val_loader = DataLoader(val_ds, batch_size=max(t.batch_size, 16), **opts)
    steps = len(train_ds) // t.batch_size
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    return train_ds, train_loader, val_loader, steps


def train_batches(config: WorkerConfig, train_ds: ShardDataset, train_loader, rank: int, epoch: int):
    """The epoch's training batches from ``train.reader``: the shard reader's DataLoader, or this
    worker's Ray Data shard (``ray.train.get_dataset_shard``; the same rows per rank, flipped alike)."""
    t = config.params.train
    if t.reader != "ray_data":
        train_ds.set_epoch(epoch)
        return train_loader
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    return ingest.epoch_batches(shard, t.batch_size, t.hflip, t.seed, rank, epoch)


def epoch_artifacts(epoch: int, samples, history: list[dict], baseline: dict) -> dict[str, bytes]:
    out = {"plots/convergence.png": figures.convergence_curve(history, baseline)} if history else {}
    if samples is not None:
        grid = figures.sample_grid(samples["composite"], samples["mask"], samples["output"], samples["real"])
        out[f"samples/epoch_{epoch:03d}.png"] = figures.png_bytes(grid)
    return out


def epoch_values(row: dict) -> dict[str, float]:
    """An epoch's history row as MLflow metrics: ``val_*`` beside ``val_composite_*``, lr, throughput."""
    values = {k: v for k, v in row.items() if k not in ("epoch", "step")}
    return {("val_" + k if k.startswith("composite_") else k): v for k, v in values.items()}


def first_batches(loader, n: int):
    """The loader's batches until they hold ``n`` samples (the sample grid of the untrained model)."""
    seen = 0
    for batch in loader:
        yield batch
        seen += len(batch["mask"])
        if seen >= n:
            return


def gate(epoch: int) -> None:
    """``HARMONIZE_GATE_DIR`` (module doc): say the epoch is done, wait to be let on."""
    folder = os.environ.get(GATE_ENV)
    if not folder:
        return
    Path(folder, f"epoch_{epoch}.done").touch()
    while not Path(folder, f"epoch_{epoch}.go").exists():
        time.sleep(0.2)


def train_loop_per_worker(ray_config: dict) -> None:
    """Ray Train entry point; ``ray_config`` is ``WorkerConfig.ray_config()`` (built by ``launch.train``)."""
    import ray.train
    import ray.train.torch

    config: WorkerConfig = ray_config[WORKER_KEY]
    quiet.worker()  # Ray Train's per-report line off the driver's console
    params = config.params
    t = params.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    engine.make_deterministic(None if t.use_gpu else max(1, t.cpus_per_worker), strict=not t.use_gpu)
    device = ray.train.torch.get_device()
    cuda.tune_backend(device)  # cudnn.benchmark, TF32: CUDA only

    state = engine.build_state(params, config.gen_spec, device, wrap=ray.train.torch.prepare_model)
    # The newest intact checkpoint on disk, also after a worker restart inside this fit (Ray's own
    # get_checkpoint() would hand back the latest it recorded, truncated or not).
    store = config.store
    folder, saved, problems = newest_state(config.checkpoint_root, store, map_location=device)
    taken = set(store.list_dirs(config.checkpoint_root))  # before this attempt writes
    for problem in problems:
        log.warning("rank %d: skipping a damaged checkpoint: %s", rank, problem)
    resumed = saved is not None
    if resumed:
        engine.load_state_dict(state, saved)
        log.info("rank %d: resumed from %s (epoch %d, step %d)", rank, folder, state.epoch, state.global_step)

    train_ds, train_loader, val_loader, steps = make_loaders(config, rank, world, device)
    total_epochs = t.epochs + t.decay_epochs
    fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    pause_after = int(os.environ.get(PAUSE_ENV, "0") or 0)
    logger = RankZeroLogger(config.tracking_uri, config.run_id, enabled=rank == 0)
    for row in state.history:  # epochs checkpointed but not logged (a tracker away when they ended)
        logger.log_epoch(row["epoch"], epoch_values(row))
    progress = Progress(state.epoch + 1, total_epochs, steps, enabled=rank == 0)  # lines on the driver
    if rank == 0 and t.sample_grid and state.epoch == 0:
        # Step 0 of the MLflow image card: what the untrained model returns. The UI opens an image card
        # at step 0, which was blank while the grids started at epoch 1.
        _, samples = engine.validate(
            engine.eval_generator(state), first_batches(val_loader, t.sample_grid), device, t.amp, keep=t.sample_grid
        )
        if samples is not None:
            logger.log_epoch(0, {}, epoch_artifacts(0, samples, [], {}))
    status = "FAILED"
    try:
        for epoch in range(state.epoch + 1, total_epochs + 1):
            engine.seed_everything(t.seed, rank, epoch)
            lr = engine.current_lr(state)
            sums: dict[str, float] = {}
            count = 0
            t0 = time.perf_counter()
            progress.begin_epoch()
            for i, batch in enumerate(train_batches(config, train_ds, train_loader, rank, epoch)):
                if i >= steps:
                    break
                try:
                    losses = engine.train_step(state, batch, t, device, t.amp)
                except engine.NonFiniteLossError:
                    logger.log_step(state.global_step, {NONFINITE_METRIC: state.nonfinite_steps})
                    raise
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                progress.step(epoch, i, losses)
                count += bool(losses)
                if state.global_step % t.log_every_steps == 0 or i == steps - 1:
                    means = {k: v / max(count, 1) for k, v in sums.items()}
                    logger.log_step(state.global_step, {**means, NONFINITE_METRIC: state.nonfinite_steps})
                    sums, count = {}, 0
            train_s = time.perf_counter() - t0
            engine.end_epoch(state)

            keep = t.sample_grid if rank == 0 else 0
            val_sums, samples = engine.validate(
                engine.eval_generator(state), val_loader, device, t.amp, keep=keep
            )
            val_sums.all_reduce()
            val, composite = val_sums.means()
            row = {
                "epoch": epoch,
                "step": state.global_step,
                **val,
                **{f"composite_{k[4:]}": v for k, v in composite.items()},
                "lr": lr,
                "images_per_s": steps * t.batch_size * world / max(train_s, 1e-9),
                "epoch_time_s": time.perf_counter() - t0,
            }
            state.history.append(row)
            progress.end_epoch(row)
            engine.track_best(state, row["val_fmse"])

            check_weights(state)
            # the checkpoint first: it never waits on MLflow
            report_checkpoint(state, row, rank, checkpoint_dir_name(epoch, taken), device)
            if rank == 0:
                baseline = {k: row[f"composite_{k[4:]}"] for k in ("val_psnr", "val_fmse")}
                logger.log_epoch(epoch, epoch_values(row), epoch_artifacts(epoch, samples, state.history, baseline))
                gate(epoch)
            if fault_after == epoch and not resumed:
                if torch.distributed.is_initialized():
                    # every worker dies after the epoch is checkpointed and logged, not while rank 0 logs
                    torch.distributed.barrier()
                raise RuntimeError(f"{FAULT_ENV}={fault_after}: injected failure after epoch {epoch}")
            if pause_after == epoch and not resumed:
                log.warning(
                    "rank %d: %s=%d: paused after epoch %d until stopped", rank, PAUSE_ENV, epoch, epoch
                )
                while True:
                    time.sleep(1)
        status = "FINISHED"
    finally:
        logger.close(status, config.checkpoint_root)
