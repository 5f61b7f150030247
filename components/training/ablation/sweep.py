"""The ablation sweep on Ray Tune: one trial per planned variant (``plan.py``), the MLflow parent and child
runs, and the results read back for the table (``report.py``); ``components/stages/ablate.py`` drives it.

Run. Each distinct variant is one Tune trial: a function that calls ``launch.train`` (a TorchTrainer
with ``TuneReportCallback``, so Tune sees every epoch; ASHA can stop trials early when
``ablate.asha``). Same data, epochs and seed for all. MLflow: one parent run per sweep in
``ablate.experiment``; each trial's training run is a nested child run of it (tag
``mlflow.parentRunId``) with the placement name and string, family and head as params and the
per-epoch validation metrics (step = epoch).

Robustness. A failing trial is recorded as failed (table, MLflow) and the others go on. Rerunning the
same sweep skips the variants whose child run already finished its epochs and resumes the others from
their Ray Train checkpoints (``<storage.root>/ray/<train key>/``), so an interrupted sweep continues.

Fault injection for tests and drills: ``HARMONIZE_ABLATE_FAIL=<variant>[,<variant>...]`` makes those
variants' workers fail after their first epoch with no retry (a rerun without it resumes them).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path

from components import tracking
from components.config import Params
from components.storage import Store
from components.tracking import sweeps
from components.tracking.training_log import training_dataset
from components.training import launch
from components.training.ablation.plan import Variant, sweep_name
from components.training.ablation.report import METRICS
from components.training.loop import FAULT_ENV

log = logging.getLogger(__name__)

FAIL_ENV = "HARMONIZE_ABLATE_FAIL"



# --------------------------------------------------------------------------------------------------
# One trial (runs in a Tune trial actor)
# --------------------------------------------------------------------------------------------------


def run_trial(config: dict, sweep: dict) -> None:
    """Tune function: train one variant with ``launch.train``, each epoch reported to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ.update(sweep["env"])
    tracking.configure(sweep["tracking_uri"])
    v = Variant(**sweep["variants"][config["variant"]])
    params: Params = sweep["params"][v.id]
    worker_env = {}
    if v.id in sweep["fail"]:
        worker_env[FAULT_ENV] = "1"
        params.train.max_failures = 0
    res = launch.train(
        params,
        key_prefix=f"{sweep['key']}.{v.id}",
        tags={
            **sweep["git_tags"],  # the trial's working directory may not be the checkout
            "mlflow.parentRunId": sweep["parent_run_id"],
            sweeps.CHILD_TAG: sweep["key"],
            sweeps.VARIANT_TAG: v.id,
            "ablation_type": v.type,
            "family": v.family,
            "head": v.head,
        },
        extra_params={
            "ablation.variant": v.id,
            "ablation.family": v.family,
            "ablation.head": v.head,
            "ablation.placement": v.placement or "none",
            "ablation.placement_string": v.placement_string or "none",
            "ablation.effective_placement": v.effective or "none",
            "ablation.type": v.type,
            "ablation.stands_for": ",".join(v.stands_for),
        },
        callbacks=[TuneReportCallback()],
        worker_env=worker_env,
    )
    sweeps.finish_run(res.run_id)


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------


def is_finished(run, epochs: int, asha: bool = False) -> bool:
    if run is None:
        return False
    if asha and run.data.tags.get(sweeps.STOPPED_TAG) == "asha":
        return True  # ASHA's decision stands: rerunning the sweep does not revive it
    if run.info.status != "FINISHED":
        return False
    return max((r["epoch"] for r in sweeps.curves(run.info.run_id, METRICS)), default=0) >= epochs


# --------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------


def sweep_cpus(params: Params, probe: Params) -> int:
    """The CPUs a local Ray for the sweep needs: what ``max_concurrent_trials`` trials ask for."""
    t, a = probe.train, params.ablate
    group = t.num_workers * t.cpus_per_worker
    per_trial = group + a.trial_cpus
    # + one worker group of headroom: a finished or ASHA-stopped trial's placement group is released
    # asynchronously (Train V2's PlacementGroupCleaner), and the next trial must not wait on it.
    return max(1, math.ceil(max(1, a.max_concurrent_trials) * per_trial + group))


TRAIN_ACTORS = ("TrainController", "RayTrainWorker")  # Train V2's actors: a trial's controller, its workers


def wait_for_train_actors(timeout_s: float = 300.0) -> int:
    """Block until this job's Ray Train actors have exited; returns how many were still alive at the end.

    When ASHA stops a trial, Tune kills the trial's actor and Ray tears down the Train controller and
    workers it owned asynchronously: ``tuner.fit()`` can return while a worker still trains and logs
    another epoch to MLflow, after the table was read from the runs. Waiting here keeps the table and
    the runs in agreement. Without Ray's state API (no dashboard) it only warns.
    """
    import ray
    from ray.util.state import list_actors

    ctx = ray.get_runtime_context()
    job, address = ctx.get_job_id(), ctx.gcs_address  # this Ray's address: another local Ray may be up
    filters = [("job_id", "=", job), ("state", "!=", "DEAD")]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actors = list_actors(address=address, filters=filters, limit=10000)
            alive = [a for a in actors if a.class_name.rsplit(".", 1)[-1] in TRAIN_ACTORS]
        except Exception as e:  # noqa: BLE001 (the state API is optional: a cluster without a dashboard)
            log.warning("cannot list Ray actors (%s); a stopped trial may still log an epoch", e)
            return 0
        if not alive:
            return 0
        if time.monotonic() > deadline:
            log.warning("%d Ray Train actors still alive %.0f s after the sweep", len(alive), timeout_s)
            return len(alive)
        log.debug("waiting for %d Ray Train actors of finished trials to exit", len(alive))
        time.sleep(0.5)


def _first_line(text: str, limit: int = 160) -> str:
    for line in reversed(str(text).strip().splitlines()):
        if "Error" in line or "error" in line:
            return line.strip()[:limit]
    return str(text).strip().splitlines()[-1][:limit] if str(text).strip() else ""


def absolute_paths(params: Params) -> Params:
    """A copy with the storage root (``Store.anchored``) and dataset card as absolute paths: Tune trials
    run in other working directories, and what they read must be what the driver planned with."""
    p = copy.deepcopy(params)
    p.storage.root = Store.from_config(p.storage).anchored().root
    p.prepare.card = str(Path(p.prepare.card).absolute())
    return p


def tune_trials(
    params: Params, probe: Params, key: str, parent: str, uri: str, todo: list[Variant],
    per_variant: dict[str, Params], fail: set[str], store: Store,
) -> tuple[dict[str, str], set[str]]:  # fmt: skip
    """Run ``todo`` as Tune trials; returns (variant -> error line, variants stopped early)."""
    import ray.tune
    from ray import tune

    a = params.ablate
    launch.start_ray(probe.train, sweep_cpus(params, probe))
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # propagated to the trials: keep the driver's cwd
    sweep = {
        "key": key,
        "parent_run_id": parent,
        "tracking_uri": uri,
        "env": {**launch.forwarded_env(), tracking.ENV_VAR: uri},
        "git_tags": {k: v for k, v in tracking.standard_tags(params, None).items() if "git" in k},
        "variants": {v.id: dataclasses.asdict(v) for v in todo},
        "params": {v.id: per_variant[v.id] for v in todo},
        "fail": sorted(fail),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), {"cpu": a.trial_cpus})
    scheduler = None
    if a.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric="val_psnr",
            mode="max",
            max_t=probe.train.epochs + probe.train.decay_epochs,
            grace_period=a.asha_grace_period,
            reduction_factor=a.asha_reduction_factor,
            # A trial that reaches the last epoch ends by itself: stopped there, Tune would kill it right
            # after its last report, before rank 0 logs that epoch (the checkpoint comes first).
            stop_last_trials=False,
        )
    fs, path = store.filesystem(store.uri("tune"))
    tuner = tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search([v.id for v in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=a.max_concurrent_trials, scheduler=scheduler),
        run_config=ray.tune.RunConfig(
            name=f"{key}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.tune.FailureConfig(max_failures=a.max_failures),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    wait_for_train_actors()
    errors: dict[str, str] = {}
    stopped: set[str] = set()
    reported: dict[str, list[dict]] = {}
    total = probe.train.epochs + probe.train.decay_epochs
    for result in grid:
        vid = (result.config or {}).get("variant")
        if vid is None:
            continue
        if result.metrics_dataframe is not None:
            reported[vid] = result.metrics_dataframe.to_dict("records")
        if result.error is not None:
            errors[vid] = _first_line(result.error)
            log.warning("variant %s failed: %s", vid, errors[vid])
        elif a.asha and int((result.metrics or {}).get("epoch", total)) < total:
            stopped.add(vid)
    return errors, stopped, reported


def find_or_create_parent(params: Params, key: str, variants: list[Variant], data_hash: str) -> str:
    """The sweep's MLflow parent run (found by its key, or created), tagged and with its params."""
    tags = tracking.standard_tags(params, data_hash, dataset=launch.dataset_name(params))
    dataset = training_dataset(params, launch.dataset_name(params), data_hash)
    return sweeps.start_sweep(
        params, params.ablate.experiment, key, sweep_name(params), tags, [v.id for v in variants], dataset
    )
