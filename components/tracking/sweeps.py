"""MLflow for the ablation sweep: the parent run, one nested child run per trial (the trial's training
run, tag ``mlflow.parentRunId``), their statuses and the results read back for the table. The sweep
(``components/training/ablation/sweep.py``) and the ``ablate`` stage call these; only this package
talks to MLflow."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient

from components import tracking
from components.tracking.training_log import RankZeroLogger

SWEEP_TAG = "ablation_sweep"  # on the parent: the sweep key
CHILD_TAG = "ablation_sweep_child"  # on each trial run: the sweep key
VARIANT_TAG = "ablation_variant"
STOPPED_TAG = "ablation_stopped"  # on a child run that ASHA cut early: not resumed by a rerun of an ASHA sweep


def start_sweep(
    params: Any, experiment: str, key: str, run_name: str, tags: dict, variant_ids: list[str], dataset: dict
) -> str:
    """The sweep's parent run: found by ``key`` (a rerun resumes it) or created, with the sweep's data
    as its input (logged before any trial starts: the concurrent trials then link the experiment's
    existing dataset instead of racing to insert it), its tags and params; returns its id."""
    client = MlflowClient()
    exp = tracking.get_or_create_experiment(experiment, client)
    run = tracking.find_latest_run(exp, tracking.equals_filter(f"tags.{SWEEP_TAG}", key), client)
    tags = {**tags, SWEEP_TAG: key, "placement": "sweep", "variants": str(len(variant_ids))}
    if run is None:
        run_id = client.create_run(exp.experiment_id, run_name=run_name, tags=tags).info.run_id
        tracking.log_dataset_input(run_id, client=client, context="training", **dataset)
    else:
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    tracking.log_params_flat(params, run_id=run_id, on_conflict="keep", client=client)
    tracking.log_params_flat(
        {"ablation.variants": ",".join(variant_ids)}, run_id=run_id, on_conflict="keep", client=client
    )
    return run_id


def child_runs(experiment: str, key: str) -> dict[str, Any]:
    """Variant id -> its latest child run in this sweep."""
    client = MlflowClient()
    exp = tracking.get_or_create_experiment(experiment, client)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=tracking.equals_filter(f"tags.{CHILD_TAG}", key),
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r.data.tags.get(VARIANT_TAG, ""), r)
    return out


def curves(run_id: str, metrics: tuple[str, ...]) -> list[dict]:
    """Per-epoch rows ``{"epoch", "val_psnr", "val_mse", "val_fmse", "val_composite_*"}`` of a child run."""
    client = MlflowClient()
    rows: dict[int, dict] = {}
    for name in (*metrics, "val_composite_psnr", "val_composite_mse", "val_composite_fmse"):
        for m in client.get_metric_history(run_id, name):
            rows.setdefault(int(m.step), {"epoch": int(m.step)})[name] = float(m.value)
    return [rows[e] for e in sorted(rows) if all(k in rows[e] for k in metrics)]


def failed_child(client, experiment: str, key: str, parent: str, variant_id: str, variant_type: str):
    exp = tracking.get_or_create_experiment(experiment, client)
    tags = {"mlflow.parentRunId": parent, CHILD_TAG: key, VARIANT_TAG: variant_id, "ablation_type": variant_type}
    run = client.create_run(exp.experiment_id, run_name=variant_id, tags=tags)
    client.set_terminated(run.info.run_id, status="FAILED")
    return client.get_run(run.info.run_id)


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status=status)


def record_trial(
    run, status: str, experiment: str, key: str, parent: str, variant_id: str, variant_type: str, error: str = ""
):  # fmt: skip
    """A trial's outcome on its child run (``status``: FAILED, FINISHED, STOPPED or INCOMPLETE): a failed
    trial's run ends FAILED with its error (a trial that failed before training started gets a failed
    child run of its own), a finished one FINISHED, one ASHA stopped KILLED and tagged so a rerun does
    not revive it. Returns the child run (None: none exists)."""
    client = MlflowClient()
    if status == "FAILED":
        if run is None:
            run = failed_child(client, experiment, key, parent, variant_id, variant_type)
        else:
            client.set_terminated(run.info.run_id, status="FAILED")
        client.set_tag(run.info.run_id, "ablation_error", error[:500])
    elif status == "FINISHED" and run is not None and run.info.status != "FINISHED":
        client.set_terminated(run.info.run_id, status="FINISHED")
    elif status == "STOPPED" and run is not None:
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, STOPPED_TAG, "asha")
    return run


def finish_sweep(parent: str, artifacts: list[str], best: dict[str, float], n_failed: int) -> None:
    """The parent run's files (local paths), best val PSNR per variant and its end: FAILED when a trial
    failed."""
    client = MlflowClient()
    for path in artifacts:
        client.log_artifact(parent, path, "ablation")
    for variant, value in best.items():
        client.log_metric(parent, f"best_val_psnr.{variant}", float(value))
    client.set_tag(parent, "failed_variants", str(n_failed))
    client.set_terminated(parent, status="FINISHED" if n_failed == 0 else "FAILED")


def log_reported_epochs(tracking_uri: str, runs: dict[str, Any], reported: dict[str, list[dict]]) -> None:
    """Log to each child run the epochs its trial reported (so checkpointed) but did not log: a worker
    checkpoints an epoch before it logs it, and a trial that ASHA stops is killed right after a report,
    possibly before rank 0 logged that epoch. Through the workers' own logger: never an epoch twice."""
    from components.training.loop import epoch_values

    for vid, records in reported.items():
        run_ = runs.get(vid)
        rows = [r for r in records if isinstance(r.get("epoch"), int | float) and "val_fmse" in r]
        if run_ is None or not rows:
            continue
        logger = RankZeroLogger(tracking_uri, run_.info.run_id, enabled=True, system_metrics=False)
        keys = ("val_", "composite_", "lr", "images_per_s", "epoch_time_s")
        for r in sorted(rows, key=lambda r: r["epoch"]):
            row = {k: float(v) for k, v in r.items() if k.startswith(keys) and isinstance(v, int | float) and v == v}
            logger.log_epoch(int(r["epoch"]), epoch_values(row))
        logger.client.update_run(run_.info.run_id, status=run_.info.status)  # the logger reopened it
