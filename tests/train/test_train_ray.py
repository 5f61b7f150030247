"""``python -m pipeline.train`` end to end on real Ray, real MLflow, real S3 (moto): tiny data, tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time

import boto3
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from components.checkpoint import load_generator
from tests.train.conftest import PY, REPO, TINY, read_json, run_train, write_tiny_dataset

pytestmark = pytest.mark.slow

FAULT = "HARMONIZE_FAULT_AFTER_EPOCH"


def outputs(proj) -> list[str]:
    return [
        f"train.weights_out={proj / 'models' / 'generator.pt'}",
        f"train.metrics_out={proj / 'metrics' / 'train.json'}",
        f"train.plots_out={proj / 'metrics' / 'train_epochs.csv'}",
    ]


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def test_two_workers_killed_run_resumes_from_its_checkpoint(tiny_local, ray_cluster):
    """Both commands on the session's Ray head (2 CPUs: the two 1-CPU workers), as RAY_ADDRESS. The
    storage root is relative, as in params.yaml (each Ray Train worker runs in a folder of its own)."""
    proj, root = tiny_local["proj"], tiny_local["root"]
    assert root == str(proj / "store")
    db = f"sqlite:///{proj / 'mlflow.db'}"
    args = [*TINY, "storage.root=store", "prepare.name=tiny", "train.num_workers=2", "train.epochs=2",
            "train.max_failures=0", "model.generator.head=image", *outputs(proj)]  # fmt: skip
    # (the image head: a transform head starts as the identity and barely moves in 4 tiny steps)
    env = {"MLFLOW_TRACKING_URI": db, "RAY_ADDRESS": ray_cluster["address"]}

    # First attempt: every worker dies right after epoch 1 is checkpointed; no retries allowed.
    first = run_train(proj, args, env={**env, FAULT: "1"})
    assert first.returncode != 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "injected failure after epoch 1" in first.stdout + first.stderr
    assert not (proj / "metrics" / "train.json").exists()
    ray_dir = proj / "store" / "ray"
    (key_dir,) = list(ray_dir.iterdir())
    assert (key_dir / "epoch_0001" / "state.pt").is_file()
    assert not (key_dir / "epoch_0002").exists()

    mlflow.set_tracking_uri(db)
    client = MlflowClient(db)
    exp = client.get_experiment_by_name("harmonization-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert steps(client, run.info.run_id, "val_fmse") == [1]
    logged_steps = steps(client, run.info.run_id, "train/loss_g")
    assert logged_steps and max(logged_steps) == 2  # 16 rows / 2 workers / batch 4 = 2 steps per epoch

    # Same command again: resumes at epoch 2 in the same MLflow run, nothing logged twice.
    second = run_train(proj, args, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = read_json(proj / "metrics" / "train.json")
    assert summary["run_id"] == run.info.run_id
    assert summary["epochs_done"] == 2 and summary["global_step"] == 4
    assert summary["train_key"] == key_dir.name
    assert np.isfinite(summary["val_fmse"]) and summary["composite"]["val_fmse"] > 0
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "val_fmse") == [1, 2]
    assert steps(client, run.info.run_id, "train/loss_g") == sorted(set(logged_steps) | {4})
    assert {"git_commit", "dataset_hash", "model", "placement"} <= set(run.data.tags)
    assert run.data.tags["placement"] == "rain-decoder"
    assert run.data.params["train.num_workers"] == "2"
    # the sample grid per epoch goes through log_image (key samples); the latest is samples.png
    assert "samples.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # ... from step 0 (the untrained model), where the UI's image card opens, to the last epoch
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [0, 1, 2], images
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/convergence.png"]

    with open(proj / "metrics" / "train_epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["val_fmse"]) == pytest.approx(summary["val_fmse"], rel=1e-5)

    # The generator file and the logged MLflow model are the same network, and the model harmonizes.
    model, info = load_generator(str(proj / "models" / "generator.pt"))
    assert info["meta"]["run_id"] == run.info.run_id and info["meta"]["epoch"] == 2
    pyfunc = mlflow.pyfunc.load_model(summary["model_uri"])
    rng = np.random.default_rng(1)
    composite = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    mask = np.zeros((2, 32, 32), np.uint8)
    mask[:, 8:20, 10:24] = 255
    out = pyfunc.predict({"composite": composite, "mask": mask})
    assert out.shape == composite.shape and out.dtype == np.uint8
    fg = mask > 0
    assert np.array_equal(out[~fg], composite[~fg])  # background untouched
    assert (out[fg] != composite[fg]).mean() > 0.5  # foreground harmonized

    # The same command once more: the training has finished, so nothing trains again, nothing is logged
    # twice and no checkpoint is lost.
    before = {p.name: p.joinpath("state.pt").read_bytes() for p in key_dir.iterdir() if p.is_dir()}
    third = run_train(proj, args, env=env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    again = read_json(proj / "metrics" / "train.json")
    assert (again["run_id"], again["epochs_done"], again["global_step"]) == (run.info.run_id, 2, 4)
    assert {p.name: p.joinpath("state.pt").read_bytes() for p in key_dir.iterdir() if p.is_dir()} == before
    assert steps(client, run.info.run_id, "val_fmse") == [1, 2]


def test_ray_job_submit_with_s3_checkpoints_and_worker_restart(
    ray_cluster, mlflow_server, s3_bucket, tmp_path
):
    """A job on a Ray head: data and checkpoints on S3, MLflow on a server, one injected worker failure
    that FailureConfig recovers from the epoch-1 checkpoint."""
    write_tiny_dataset(s3_bucket, n_train=8, n_val=4)
    out = tmp_path / "out"
    args = [*TINY, f"storage.root={s3_bucket}", "prepare.name=tiny", "train.epochs=2", "train.max_failures=1",
            *outputs(out)]  # fmt: skip
    env_vars = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
        FAULT: "1",
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                       "AWS_ENDPOINT_URL")},
    }  # fmt: skip
    cmd = [str(REPO / ".venv" / "bin" / "ray") if (REPO / ".venv" / "bin" / "ray").exists() else "ray",
           "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", PY, "-m", "pipeline.train"]  # fmt: skip
    for a in args:
        cmd += ["-S", a]
    for _ in range(90):  # a fresh head's job agent registers a little after the dashboard answers
        job = subprocess.run(cmd, capture_output=True, text=True, timeout=480,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
        if "No available agent to submit job" not in job.stderr:
            break
        time.sleep(2)
    log = job.stdout[-4000:] + job.stderr[-4000:]
    assert job.returncode == 0, log
    assert "succeeded" in job.stdout.lower(), log
    assert "injected failure after epoch 1" in job.stdout + job.stderr  # the restart really happened

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("harmonization-train")
    runs = client.search_runs([exp.experiment_id], filter_string="params.`prepare.name` = 'tiny'")
    # training runs log the prepare / model / train params; the dataset input's source names the bucket
    run = next(r for r in runs if any(s3_bucket in d.dataset.source for d in r.inputs.dataset_inputs))
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "val_fmse") == [1, 2]
    assert run.data.tags["model_epoch"] == "2"  # the final generator was logged as the run's model

    bucket = s3_bucket[len("s3://") :]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]]
    ckpts = sorted({p[2] for p in (k.split("/") for k in keys) if len(p) > 3 and p[2].startswith("epoch_")})
    assert ckpts == ["epoch_0001", "epoch_0002"]
    assert any(k.endswith("epoch_0002/state.pt") for k in keys)
