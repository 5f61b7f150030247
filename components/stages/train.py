"""The ``train`` stage: pre-flight, a local Ray (or ``RAY_ADDRESS``), ``launch.train``, then the files DVC
tracks: ``train.weights_out`` (also the run's MLflow model), ``train.plots_out`` (one row per epoch),
``train.metrics_out`` and its headline numbers. Training itself writes no stage file
(``components/training/launch.py``), so every ablation trial calls the same function."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Any

from components import headline, tracking
from components.checkpoint import save_generator
from components.config import Params
from components.errors import UserError
from components.storage import Store
from components.tracking import models as tracking_models
from components.tracking.training_log import retry_env, tracking_errors
from components.training import engine, ingest, remote
from components.training.launch import (
    TrainResult,
    check_inputs,
    forwarded_env,
    preflight,
    train,
    train_cpus,
)
from components.training.loop import FAULT_ENV

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "epoch", "step", "val_mse", "val_psnr", "val_fmse", "val_fpsnr",
    "composite_mse", "composite_psnr", "composite_fmse", "composite_fpsnr",
    "lr", "images_per_s", "epoch_time_s",
)  # fmt: skip


def epochs_csv(history: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def summary(history: list[dict], model_epoch: int | None = None, **info: Any) -> dict[str, Any]:
    """The run's DVC metrics: the validation metrics of the epoch whose model was kept."""
    last = next((r for r in history if r["epoch"] == model_epoch), history[-1])
    out = dict(info)
    out["epochs_done"] = history[-1]["epoch"]
    out["model_epoch"] = last["epoch"]
    out["global_step"] = last["step"]
    for k in ("val_mse", "val_psnr", "val_fmse", "val_fpsnr"):
        out[k] = round(float(last[k]), 6)
    out["composite"] = {
        k: round(float(last[f"composite_{k[4:]}"]), 6)
        for k in ("val_mse", "val_psnr", "val_fmse", "val_fpsnr")
    }
    out["fmse_vs_composite"] = round(float(last["val_fmse"]) / max(float(last["composite_fmse"]), 1e-12), 6)
    out["images_per_s"] = round(float(sum(r["images_per_s"] for r in history) / len(history)), 3)
    return out


def calibrate(
    params: Params, res: TrainResult, model: Any, val_uris: list[str], store: Store
) -> tuple[dict, dict[str, float]]:
    """``(spec, summary entries)``: ``train.calibrate`` on a transform head fits the strength of its
    correction, and with ``train.calibrate_low_bin_max`` a dead zone, on the val split (calibrate.py) and
    puts them in the spec; otherwise the spec as trained."""
    from torch.utils.data import DataLoader

    from components.data.shards import ShardDataset
    from components.training.calibrate import fit_correction

    if not params.train.calibrate or model.head.head == "image":
        return res.spec, {}
    val = ShardDataset(val_uris, store=store, shuffle=False, even=False, image_size=res.image_size)
    cal = fit_correction(model, DataLoader(val, batch_size=64, num_workers=0),
                         low_bin_max=params.train.calibrate_low_bin_max)  # fmt: skip
    log.info(
        "strength %.2f, dead zone %.2f fitted on the val split: val fMSE %.2f (%.2f as trained); "
        "composites under fMSE 300: %s of their own error (%s as trained)",
        cal.strength, cal.deadzone, cal.val_fmse, cal.as_trained_fmse,
        _ratio(cal.low_bin_ratio), _ratio(cal.as_trained_low_bin_ratio),
    )  # fmt: skip
    entries = {
        "strength": cal.strength,
        "deadzone": cal.deadzone,
        "val_fmse_calibrated": round(cal.val_fmse, 6),
    }
    if cal.low_bin_ratio is not None:
        entries["val_low_bin_ratio_calibrated"] = round(cal.low_bin_ratio, 6)
        entries["val_low_bin_ratio"] = round(cal.as_trained_low_bin_ratio, 6)
    # metrics, not params: a rerun of a finished training fits them again
    tracking.log_metrics(res.run_id, entries)
    spec = {**res.spec, "strength": cal.strength} | ({"deadzone": cal.deadzone} if cal.deadzone else {})
    return spec, entries


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def write_outputs(
    params: Params, res: TrainResult, store: Store, val_uris: list[str] | None = None
) -> dict[str, Any]:
    """The stage files, through the stage's store: ``train.weights_out`` (also the run's MLflow model),
    the epochs CSV, the summary JSON (returned) and its headline numbers. With ``val_uris`` a transform
    head's strength is fitted on them first (``train.calibrate``)."""
    t = params.train
    model = engine.build_model(res.spec)
    model.load_state_dict(res.generator_state, strict=True)
    spec, calibration = calibrate(params, res, model, val_uris, store) if val_uris else (res.spec, {})
    if spec is not res.spec:
        model = engine.build_model(spec)
        model.load_state_dict(res.generator_state, strict=True)
    meta = {
        "run_id": res.run_id,
        "train_key": res.train_key,
        "dataset": res.dataset,
        "dataset_hash": res.dataset_hash,
        "placement": res.tags.get("placement", "none"),
        "epoch": res.model_epoch,
        "epochs_trained": res.epochs_done,
    }
    save_generator(t.weights_out, model, spec, res.image_size, meta, store)
    model_uri = tracking_models.log_final_model(res.run_id, t.weights_out, res.image_size, res.model_epoch)
    store.write_bytes(t.plots_out, epochs_csv(res.history))
    out = summary(
        res.history,
        run_id=res.run_id,
        run_name=res.run_name,
        train_key=res.train_key,
        experiment=res.experiment,
        model_uri=model_uri,
        dataset=res.dataset,
        dataset_hash=res.dataset_hash,
        image_size=res.image_size,
        checkpoint=res.checkpoint,
        model_epoch=res.model_epoch,
        **calibration,
    )
    store.write_bytes(t.metrics_out, (json.dumps(out, indent=2, sort_keys=True) + "\n").encode())
    headline.write(headline.path_for(t.metrics_out), headline.train(out), store)
    return out


def run(params: Params) -> dict[str, Any]:
    """The ``train`` stage: train (or resume) as ``params`` say on a local Ray (or ``RAY_ADDRESS``), then
    write the stage files; returns the summary written to ``train.metrics_out``. When ``evaluate`` scores
    this file, the previous model's test headline is removed (its numbers would be stale)."""
    remote.check_shared(params.storage.root)  # a job's runs must land where they are kept
    inputs = check_inputs(params)  # before Ray starts: a missing dataset or a bad spec fails in a second
    forwarded_env()  # a URL with credentials in it is refused before Ray starts
    os.environ.update(retry_env())  # before a local Ray starts: its workers inherit the budget
    preflight(params, "train", train_cpus(params))  # GPUs, Ray; before the MLflow run exists
    ingest.check_cpus(params.train)  # train.reader=ray_data: a CPU beside the workers
    res = train(params, inputs=inputs)
    try:
        out = write_outputs(params, res, inputs.store, inputs.val_uris)
    except tracking_errors() as exc:
        raise UserError(
            f"training {res.train_key} is done and checkpointed under {res.checkpoint}, but MLflow at "
            f"{tracking.tracking_uri()} does not answer ({str(exc).splitlines()[0][:200]}): the model is "
            "not logged. Rerun the same command once MLflow answers: the training is not repeated"
        ) from None
    if os.environ.get(FAULT_ENV):
        log.warning("%s is set: fault injection was active", FAULT_ENV)
    if params.evaluate.model == params.train.weights_out and headline.drop_stale(
        params.evaluate.summary_out, out["run_id"]
    ):
        log.info("removed the test headline of the previous model (run evaluate for this one's)")
    return out
