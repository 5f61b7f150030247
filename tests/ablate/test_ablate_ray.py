"""``python -m pipeline.ablate`` on a real Ray head and a real MLflow store: tiny data, tiny RainNets.

One sweep of four placement names that build three distinct networks at 32x32 (rain-3 and rain-4
have the same layers there), one of them forced to fail; then the same command again resumes it.
"""

from __future__ import annotations

import csv
import os
import subprocess

import pytest
from mlflow import MlflowClient

from components.config import load_params
from tests.train.conftest import PY, REPO, TINY

pytestmark = pytest.mark.slow


def run_ablate(cwd, overrides: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "pipeline.ablate"]
    for o in overrides:
        cmd += ["-S", o]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", **env}  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_csv(path) -> dict[str, dict]:
    with open(path) as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def sweep_args(root: str, reports, *extra: str) -> list[str]:
    """The tiny sweep's overrides: tiny data and networks, 1-CPU trainings, reports under ``reports``."""
    return [*TINY, f"storage.root={root}", "prepare.name=tiny", "train.sample_grid=0",
            "ablate.decay_epochs=0", "ablate.trial_cpus=0.05", "ablate.cpus_per_worker=1",
            f"ablate.csv_out={reports / 'ablation.csv'}", f"ablate.md_out={reports / 'ablation.md'}",
            f"ablate.figure_out={reports / 'ablation.png'}", *extra]  # fmt: skip


def test_sweep_with_a_failed_trial_then_resume(tiny_local):
    proj, root = tiny_local["proj"], tiny_local["root"]
    db = f"sqlite:///{proj / 'mlflow.db'}"
    reports = proj / "reports"
    args = sweep_args(root, reports, "ablate.placements=[baseline, rain-3, rain-4, rain-1]", "ablate.epochs=1",
                      "ablate.max_concurrent_trials=3")  # fmt: skip
    # A local Ray per command, sized for the three 1-CPU trainings and their Tune trials at once.
    env = {"MLFLOW_TRACKING_URI": db}

    first = run_ablate(proj, args, {**env, "HARMONIZE_ABLATE_FAIL": "rainnet-rain-1"})
    log = first.stdout[-4000:] + first.stderr[-4000:]
    assert first.returncode == 1, log  # one variant did not finish
    rows = read_csv(reports / "ablation.csv")
    assert list(rows) == ["rainnet-baseline", "rainnet-rain-3", "rainnet-rain-1"], log
    assert rows["rainnet-rain-3"]["stands_for"] == "rainnet-rain-3;rainnet-rain-4"
    assert rows["rainnet-rain-3"]["effective_placement"] == "RRR....I...RRR"
    assert (
        rows["rainnet-rain-1"]["status"] == "FAILED" and "injected failure" in rows["rainnet-rain-1"]["error"]
    )
    for v in ("rainnet-baseline", "rainnet-rain-3"):
        assert rows[v]["status"] == "FINISHED", log
        assert (
            rows[v]["epochs"] == "1" and float(rows[v]["best_psnr"]) > 0 and rows[v]["best_psnr_epoch"] == "1"
        )
    md = (reports / "ablation.md").read_text()
    assert "composite (no harmonization)" in md and "FAILED" in md and "rainnet-rain-4" in md
    assert (reports / "ablation.png").read_bytes().startswith(b"\x89PNG")

    client = MlflowClient(db)
    exp = client.get_experiment_by_name("harmonization-ablation")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "ablation_sweep" in r.data.tags]
    children = {r.data.tags["ablation_variant"]: r for r in runs if "ablation_variant" in r.data.tags}
    assert set(children) == set(rows)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    assert children["rainnet-rain-1"].info.status == "FAILED"
    assert children["rainnet-baseline"].info.status == "FINISHED"
    # The sweep's data is the input of the parent and of every trained variant: one dataset, logged by
    # the parent before the concurrent trials start (they used to race to insert it and one failed).
    trained = [client.get_run(children[v].info.run_id) for v in ("rainnet-baseline", "rainnet-rain-3")]
    inputs = [client.get_run(parent.info.run_id), *trained]
    datasets = {(d.dataset.name, d.dataset.digest) for r in inputs for d in r.inputs.dataset_inputs}
    assert [len(r.inputs.dataset_inputs) for r in inputs] == [1, 1, 1] and len(datasets) == 1, datasets
    assert next(iter(datasets))[0] == "tiny"
    c = children["rainnet-rain-3"]
    assert c.data.params["ablation.placement"] == "rain-3"
    assert c.data.params["ablation.placement_string"] == "RRRIIIIIIIIRRR"
    default_head = load_params(REPO / "params.yaml").model.generator["head"]  # ablate.heads null: this one
    assert c.data.params["ablation.family"] == "rainnet" and c.data.params["ablation.head"] == default_head
    assert c.data.params["ablation.stands_for"] == "rainnet-rain-3,rainnet-rain-4"
    for m in ("val_psnr", "val_mse", "val_fmse"):
        assert steps(client, c.info.run_id, m) == [1]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "ablation")}
    assert {"ablation/ablation.csv", "ablation/ablation.md", "ablation/ablation.png"} <= logged
    assert parent.info.status == "FAILED" and parent.data.tags["failed_variants"] == "1"

    # The same command again, no fault: the finished variants are skipped, the failed one resumes.
    second = run_ablate(proj, args, env)
    log = second.stdout[-4000:] + second.stderr[-4000:]
    assert second.returncode == 0, log
    assert "already finished, not rerun: rainnet-baseline, rainnet-rain-3" in second.stdout + second.stderr
    rows = read_csv(reports / "ablation.csv")
    assert [r["status"] for r in rows.values()] == ["FINISHED"] * 3, log
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4  # the same parent and the same three children
    again = {r.data.tags["ablation_variant"]: r for r in runs if "ablation_variant" in r.data.tags}
    assert again["rainnet-rain-1"].info.run_id == children["rainnet-rain-1"].info.run_id
    assert again["rainnet-rain-1"].info.status == "FINISHED"
    assert steps(client, again["rainnet-rain-1"].info.run_id, "val_psnr") == [1]  # nothing logged twice
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_asha_sweep_reports_stopped_trials_consistently(tiny_local):
    """ASHA on (``ablate.asha``): trials run one at a time, so each is judged against those before it.

    Which variant ASHA stops depends on the values (and a stop can arrive after a short trial already
    ran its last epoch); what must hold either way: a variant is FINISHED with every epoch logged or
    STOPPED with fewer and its MLflow run KILLED, the stage succeeds, and a rerun revives nothing.
    """
    proj, root = tiny_local["proj"], tiny_local["root"]
    db = f"sqlite:///{proj / 'mlflow.db'}"
    reports = proj / "reports"
    args = sweep_args(root, reports, "ablate.placements=[baseline, rain-1]", "ablate.epochs=3",
                      "ablate.asha=true", "ablate.asha_grace_period=1", "ablate.asha_reduction_factor=4",
                      "ablate.max_concurrent_trials=1")  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": db}
    done = run_ablate(proj, args, env)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log  # an ASHA stop is an outcome, not a failure
    rows = read_csv(reports / "ablation.csv")
    assert set(rows) == {"rainnet-baseline", "rainnet-rain-1"}, log
    client = MlflowClient(db)
    for vid, row in rows.items():
        child = client.get_run(row["run_id"])
        logged = steps(client, row["run_id"], "val_psnr")
        assert row["status"] in ("FINISHED", "STOPPED"), (vid, row)
        if row["status"] == "FINISHED":
            assert logged == [1, 2, 3] and child.info.status == "FINISHED", (vid, logged)
        else:  # cut at the rung (epoch 1); the worker may finish one more epoch before the stop lands,
            # and an epoch it reported (checkpointed) but was killed before logging, the sweep logs
            assert logged in ([1], [1, 2]) and child.info.status == "KILLED", (vid, logged)
            assert row["epochs"] == str(len(logged)), (vid, row)
            assert f"stopped early by ASHA: {vid}" in done.stdout
    assert "Scheduler: ASHA on val PSNR (grace period 1 epoch(s), reduction factor 4)" in (
        reports / "ablation.md"
    ).read_text()

    again = run_ablate(proj, args, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already finished, not rerun: rainnet-baseline, rainnet-rain-1" in again.stdout + again.stderr
    assert {v: r["status"] for v, r in read_csv(reports / "ablation.csv").items()} == {
        v: r["status"] for v, r in rows.items()
    }


def test_the_sweep_waits_for_a_stopped_trials_train_actors(ray_cluster):
    """``wait_for_train_actors``, what ``_tune`` calls after ``tuner.fit()``: when ASHA stops a trial, Ray
    kills the trial's actor and the Train actors it owns die after it, asynchronously; the table must be
    read only once they are gone, or a worker logs another epoch to a run already reported STOPPED.

    Real actors on the session's Ray head, owned the way Tune owns Train's: a trial actor creates an
    actor of Train's worker class. While it lives the wait gives up at its timeout and says so; once its
    owner is killed the wait returns with nothing left alive; actors of other classes never block it.
    """
    import ray
    from ray.util.state import list_actors

    from components.training.ablation.sweep import wait_for_train_actors

    ray.init(address=ray_cluster["address"], logging_level="ERROR")
    try:

        @ray.remote(num_cpus=0)
        class RayTrainWorker:  # the name Ray Train V2 gives its workers
            def pid(self) -> int:
                return os.getpid()

        @ray.remote(num_cpus=0)
        class Trial:
            def start(self) -> str:
                self.worker = RayTrainWorker.remote()
                ray.get(self.worker.pid.remote())
                return self.worker._actor_id.hex()

        @ray.remote(num_cpus=0)
        class Other:
            def ping(self) -> int:
                return 1

        other = Other.remote()
        ray.get(other.ping.remote())
        trial = Trial.remote()
        worker_id = ray.get(trial.start.remote())
        assert wait_for_train_actors(timeout_s=1) == 1  # alive: the wait gives up, it does not hang

        ray.kill(trial)
        assert wait_for_train_actors() == 0  # the worker died with its owner; `other` did not block
        (worker,) = list_actors(address=ray_cluster["address"], filters=[("actor_id", "=", worker_id)])
        assert worker.state == "DEAD"
        ray.kill(other)
    finally:
        ray.shutdown()
