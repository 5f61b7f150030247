"""The ``ablate`` stage: the RAIN placement ablations (and DIH vs DIH + RAIN) as one Ray Tune sweep.

Plan the distinct networks, run the missing ones as Tune trials (each calls ``launch.train``), then
write ``ablate.csv_out``, ``ablate.md_out`` and ``ablate.figure_out`` from the sweep's MLflow child runs.
The plan, the trials and the table are ``components/training/ablation/`` (``plan``, ``sweep``, ``report``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from components import storage, tracking
from components.config import Params
from components.errors import UserError
from components.tracking import sweeps
from components.training import launch, remote
from components.training.ablation import plan, report, sweep

log = logging.getLogger(__name__)


def run(params: Params, command: str = "python -m pipeline.ablate") -> dict[str, Any]:
    """Plan, run the missing trials on Ray Tune, then write the table, Markdown and figures."""
    remote.check_shared(params.storage.root)  # a job's trials must track and checkpoint where kept
    params = sweep.absolute_paths(params)
    a = params.ablate
    if a.max_concurrent_trials < 1:
        raise UserError(f"ablate.max_concurrent_trials={a.max_concurrent_trials}: expected at least 1")
    if a.trial_cpus <= 0:
        raise UserError(f"ablate.trial_cpus={a.trial_cpus}: expected more than 0 (e.g. 0.1)")
    inputs = launch.check_inputs(params)
    variants = plan.plan(params, inputs.image_size)
    per_variant = {v.id: plan.trial_params(params, v) for v in variants}
    for v in variants:  # every trial's own checks before Ray starts (batch per worker, spec)
        launch.check_inputs(per_variant[v.id])
    probe = per_variant[variants[0].id]
    epochs = probe.train.epochs + probe.train.decay_epochs
    # The train stage's pre-flight; Ray is started now only to count the cluster's GPUs (before the
    # parent MLflow run exists: a missing GPU leaves nothing RUNNING), else when trials are left to run.
    launch.preflight(probe, "ablate", sweep.sweep_cpus(params, probe), start=probe.train.use_gpu)
    store, data_hash = inputs.store, inputs.dataset.content_hash
    key = plan.sweep_key(params, variants, data_hash)
    uri = tracking.configure()
    parent = sweep.find_or_create_parent(params, key, variants, data_hash)
    log.info(
        "sweep %s: %d distinct networks (%s), MLflow parent run %s",
        key, len(variants), ", ".join(f"{v.id}={'+'.join(v.stands_for)}" for v in variants), parent,
    )  # fmt: skip

    done = sweeps.child_runs(a.experiment, key)
    todo = [v for v in variants if not sweep.is_finished(done.get(v.id), epochs, a.asha)]
    skipped = [v.id for v in variants if v not in todo]
    if skipped:
        log.info("already finished, not rerun: %s", ", ".join(skipped))
    fail = {s.strip() for s in os.environ.get(sweep.FAIL_ENV, "").split(",") if s.strip()}
    errors: dict[str, str] = {}
    stopped: set[str] = set()
    reported: dict[str, list[dict]] = {}
    if todo:
        errors, stopped, reported = sweep.tune_trials(
            params, probe, key, parent, uri, todo, per_variant, fail, store
        )

    # Results: every variant from its child run (curves per epoch), status from this run or before.
    done = sweeps.child_runs(a.experiment, key)
    sweeps.log_reported_epochs(uri, done, reported)
    rows, histories = [], {}
    composite = None
    for v in variants:
        run_ = done.get(v.id)
        hist = sweeps.curves(run_.info.run_id, report.METRICS) if run_ is not None else []
        histories[v.id] = hist
        if v.id in errors:
            status = "FAILED"  # failed before training started: still one failed child run
        elif run_ is not None and len(hist) >= epochs:
            status = "FINISHED"  # also when ASHA's stop came after the last epoch had run anyway
        elif v.id in stopped or (run_ is not None and run_.data.tags.get(sweeps.STOPPED_TAG) == "asha"):
            status = "STOPPED"
        else:
            status = "INCOMPLETE"
        run_ = sweeps.record_trial(run_, status, a.experiment, key, parent, v.id, v.type, errors.get(v.id, ""))
        for r in hist:
            if composite is None and "val_composite_psnr" in r:
                composite = {k: r[f"val_composite_{k}"] for k in ("psnr", "mse", "fmse")}
        run_id = run_.info.run_id if run_ else ""
        rows.append(report.result_row(v, status, hist, run_id, errors.get(v.id, "")))

    info = {
        "sweep": plan.sweep_name(params), "key": key, "parent_run_id": parent,
        "experiment": a.experiment,
        "dataset": launch.dataset_name(params), "image_size": inputs.image_size, "epochs": epochs,
        "seed": params.train.seed, "command": command,
        "scheduler": (f"ASHA on val PSNR (grace period {a.asha_grace_period} epoch(s), reduction factor "
                      f"{a.asha_reduction_factor}); STOPPED variants were cut early") if a.asha
        else "none (every variant runs all epochs)",
    }  # fmt: skip
    report.write_csv(a.csv_out, rows, store)
    store.write_bytes(a.md_out, report.markdown(rows, info, composite).encode())
    store.write_bytes(a.figure_out, report.figures(variants, histories))
    n_failed = sum(r["status"] == "FAILED" for r in rows)
    local = [p for p in (a.csv_out, a.md_out, a.figure_out) if not storage.is_s3(p)]
    best = {r["variant"]: r["best_psnr"] for r in rows if "best_psnr" in r}
    sweeps.finish_sweep(parent, local, best, n_failed)
    return {**info, "rows": rows, "skipped": skipped, "figure": a.figure_out}
