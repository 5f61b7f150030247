"""The cluster path end to end on 127.0.0.1: prepare to S3, ``ray job submit`` training on two Ray nodes,
evaluate and register against a shared MLflow on PostgreSQL, ``dvc push`` / ``dvc pull``; and no
secret of the submitting machine in any Ray log or MLflow param or tag; training that outlives the
loss of a node."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from components.checkpoint import HASH_SUFFIX
from components.training.loop import PAUSE_ENV, STATE_FILE
from tests.cluster.conftest import alive_nodes
from tests.conftest import BIN, LOOPBACK_ONLY_ENV
from tests.train.conftest import PY, REPO, TINY, project_dir, write_tiny_dataset

pytestmark = pytest.mark.slow
SMALL_PREPARE = [
    "prepare.image_size=32", "prepare.crops_per_photo=2", "prepare.composites_per_photo=1",
    "prepare.val_fraction=0.3", "prepare.test_fraction=0.2", "prepare.sources=[{kind: builtin, limit: 10}]",
]  # fmt: skip


def sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def submit_job(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``ray job submit``, asked again while a fresh head's job agent has not registered yet."""
    for _ in range(60):
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        if "No available agent to submit job" not in proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def stage(module: str, overrides: list[str]) -> list[str]:
    cmd = [PY, "-m", module]
    for o in overrides:
        cmd += ["-S", o]
    return cmd


def local_env(tracking: str, **extra: str) -> dict[str, str]:
    """The submitting machine: the moto credentials, the shared MLflow (for tracking and the registry, so
    no registry URI this process had makes the stages register elsewhere), no Ray address, git identity."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOOPBACK_ONLY_ENV)}  # a cluster client
    env.update(MLFLOW_TRACKING_URI=tracking, MLFLOW_REGISTRY_URI=tracking, PYTHONPATH=str(REPO),
               PATH=f"{BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", **extra)  # fmt: skip
    return env


def keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def run_id_in(job_log: str) -> str:
    """The MLflow run id that ``pipeline.train`` prints last (``MLflow run <id>, model runs:/...``)."""
    found = re.findall(r"MLflow run (\w+), model runs:/", job_log)
    assert found, job_log[-3000:]
    return found[-1]


def train_worker_nodes(dashboard: str, job_id: str | None = None) -> set[str]:
    """The node ids the Ray Train workers (of one Ray job) ran on (state API; dead actors are listed too)."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), *([("job_id", "=", job_id)] if job_id else [])]
    return {a.node_id for a in list_actors(address=dashboard, filters=filters, limit=1000)}


def test_prepare_job_submit_evaluate_register_dvc_push_pull(
    two_nodes, shared_mlflow, artifact_bucket, moto_endpoint, tmp_path
):
    bucket, root = artifact_bucket, f"s3://{artifact_bucket}/store"
    env = local_env(shared_mlflow)
    proj = project_dir(tmp_path / "proj")
    common = [f"storage.root={root}", "prepare.name=e2e"]

    # prepare on this machine, shards to S3
    sh([*stage("pipeline.prepare", [*common, *SMALL_PREPARE]), "--no-progress"], proj, env)
    shard_keys = keys(bucket, "store/datasets/e2e/")
    assert {k.split("/")[-1].split("-")[0] for k in shard_keys if k.endswith(".parquet")} == {"train", "val", "test"}

    # training as a Ray job: 2 workers of 1 CPU on two 1-CPU nodes, only the tracking URI in its env
    sub_id = f"train-e2e-{uuid.uuid4().hex[:6]}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": shared_mlflow}}
    submit = [
        BIN / "ray", "job", "submit", "--address", two_nodes.dashboard, "--submission-id", sub_id,
        "--metadata-json", json.dumps({"stage": "train", "profile": "tiny"}), "--working-dir", REPO,
        "--runtime-env-json", json.dumps(runtime_env), "--",
        *stage("pipeline.train", [*TINY, *common, "train.num_workers=2", "train.epochs=2"]),
    ]  # fmt: skip
    job = submit_job(submit, proj, env)
    assert f"Job '{sub_id}' succeeded" in job.stdout, job.stdout[-3000:]
    assert len(train_worker_nodes(two_nodes.dashboard)) == 2  # one worker on each node

    client = MlflowClient(shared_mlflow, registry_uri=shared_mlflow)  # not this process's registry URI
    run = client.get_run(run_id_in(job.stdout))
    assert run.info.status == "FINISHED" and run.data.tags["model_epoch"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_fmse")] == [1, 2]
    ckpts = keys(bucket, "store/ray/")
    assert any(k.endswith("epoch_0002/state.pt") for k in ckpts), ckpts[:20]
    model_files = keys(bucket, "mlartifacts/")
    assert any(k.endswith("/MLmodel") for k in model_files), model_files[:20]

    # evaluate and register on this machine, against the model the job logged
    model = f"runs:/{run.info.run_id}/model"
    sh([*stage("pipeline.evaluate", [*common, f"evaluate.model={model}", "evaluate.device=cpu"])], proj, env)
    sh(stage("pipeline.register", common), proj, env)
    registered = json.loads((proj / "metrics" / "register.json").read_text())
    name, version = registered["name"], str(registered["version"])
    assert client.get_model_version(name, version).run_id == run.info.run_id
    assert "challenger" in registered["aliases"]
    for alias in registered["aliases"]:
        assert client.get_model_version_by_alias(name, alias).version == version

    # the outputs under DVC, pushed to the same bucket, pulled into a fresh clone
    outputs = ["metrics", "reports", "data/prepared"]
    for cmd in (["git", "init", "-q"], [BIN / "dvc", "init", "-q"],
                [BIN / "dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/dvc"],
                [BIN / "dvc", "remote", "modify", "storage", "endpointurl", moto_endpoint],
                [BIN / "dvc", "add", "-q", *outputs], ["git", "add", "-A"], ["git", "commit", "-qm", "e2e"],
                [BIN / "dvc", "push", "-q"]):  # fmt: skip
        sh(cmd, proj, env)
    assert keys(bucket, "dvc/files/md5/")
    fresh = tmp_path / "fresh"
    sh(["git", "clone", "-q", proj, fresh], tmp_path, env)
    assert not (fresh / "metrics" / "register.json").exists()
    sh([BIN / "dvc", "pull", "-q"], fresh, env)
    for out in outputs:
        want = sorted(p.relative_to(proj) for p in (proj / out).rglob("*") if p.is_file())
        assert want and want == sorted(p.relative_to(fresh) for p in (fresh / out).rglob("*") if p.is_file())
        assert all((proj / p).read_bytes() == (fresh / p).read_bytes() for p in want)


def _bytes_if_still_there(path: Path) -> bytes:
    """A live Ray session rewrites some of its files by rename (its metrics service discovery file), so a
    file listed a moment ago may be gone when read: nothing in it can leak then."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_no_secret_of_the_submitting_machine_in_ray_logs_or_mlflow(
    two_nodes, shared_mlflow, artifact_bucket, tmp_path
):
    """The driver runs here against the cluster with planted secrets; the nodes use their own
    credentials, and the planted values show up in no file of either node's Ray folder."""
    root = f"s3://{artifact_bucket}/secret-store"
    write_tiny_dataset(root, name="tiny", n_train=16, n_val=4)
    tag = uuid.uuid4().hex[:8]
    planted = {
        "AWS_SECRET_ACCESS_KEY": f"planted-aws-secret-{tag}",
        "AWS_SESSION_TOKEN": f"planted-aws-session-{tag}",
        "MLFLOW_TRACKING_TOKEN": f"planted-mlflow-token-{tag}",
        "MLFLOW_TRACKING_PASSWORD": f"planted-mlflow-password-{tag}",
    }
    env = local_env(shared_mlflow, RAY_ADDRESS=two_nodes.address, MLFLOW_TRACKING_USERNAME="alice", **planted)
    proj = project_dir(tmp_path / "proj")
    out = [f"train.{k}={proj / 'out' / v}" for k, v in
           (("weights_out", "g.pt"), ("metrics_out", "t.json"), ("plots_out", "t.csv"))]  # fmt: skip
    sh(stage("pipeline.train", [*TINY, f"storage.root={root}", "prepare.name=tiny", "train.num_workers=2",
                                "train.epochs=1", *out]), proj, env)  # fmt: skip
    run_id = json.loads((proj / "out" / "t.json").read_text())["run_id"]

    secrets = [v.encode() for v in planted.values()]
    files = [p for d in two_nodes.temp_dirs for p in Path(d).rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("logs" in p.parts for p in files)
    leaks = [str(p) for p in files if any(s in _bytes_if_still_there(p) for s in secrets)]
    assert leaks == []
    data = MlflowClient(shared_mlflow).get_run(run_id).data
    values = json.dumps([data.params, data.tags])
    assert not [v for v in planted.values() if v in values]


def test_training_resumes_from_s3_after_losing_the_second_node(
    two_nodes, shared_mlflow, artifact_bucket, tmp_path, monkeypatch
):
    """The second node dies (its whole process group, SIGKILL) after the first checkpoint, while the
    workers wait there (``HARMONIZE_PAUSE_AFTER_EPOCH=1``: the loss always lands mid-training, however
    fast the epochs go); a new node joins, as an autoscaler would add one; the job carries on from the
    S3 checkpoint: every epoch once. Runs last in this module: it changes the cluster."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    root = f"s3://{artifact_bucket}/resume-store"
    write_tiny_dataset(root, name="tiny", n_train=16, n_val=4)
    jobs = JobSubmissionClient(two_nodes.dashboard)
    sub_id = f"train-resume-{uuid.uuid4().hex[:6]}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": shared_mlflow, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
                                PAUSE_ENV: "1"}}  # fmt: skip
    overrides = [*TINY, f"storage.root={root}", "prepare.name=tiny", "train.num_workers=2", "train.epochs=3",
                 "train.max_failures=2"]  # fmt: skip
    submit_job([BIN / "ray", "job", "submit", "--address", two_nodes.dashboard, "--submission-id", sub_id,
                "--working-dir", REPO, "--runtime-env-json", json.dumps(runtime_env), "--no-wait", "--",
                *stage("pipeline.train", overrides)], tmp_path, local_env(shared_mlflow))  # fmt: skip

    def until(done, what: str, timeout: float = 900):
        deadline = time.monotonic() + timeout
        while not done():
            status = jobs.get_job_status(sub_id)
            assert not (status.is_terminal() and what != "the job ends"), jobs.get_job_logs(sub_id)[-4000:]
            assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
            time.sleep(1)

    first = "resume-store/ray/"

    def checkpoint_1() -> bool:  # both of its files (S3 objects appear whole): what the resume will use
        found = keys(artifact_bucket, first)
        return all(any(k.endswith(f"epoch_0001/{f}") for k in found) for f in (STATE_FILE, STATE_FILE + HASH_SUFFIX))

    until(checkpoint_1, "checkpoint 1")
    lost = two_nodes.procs[1]
    os.killpg(lost.pid, signal.SIGKILL)  # the node's raylet, object store, workers: gone
    until(lambda: len(alive_nodes(two_nodes.dashboard)) == 1, "the cluster to mark the node dead")
    two_nodes.join()
    until(lambda: jobs.get_job_status(sub_id).is_terminal(), "the job ends")
    logs = jobs.get_job_logs(sub_id)
    assert jobs.get_job_status(sub_id) == JobStatus.SUCCEEDED, logs[-4000:]

    client = MlflowClient(shared_mlflow)
    run = client.get_run(run_id_in(logs))
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_fmse")] == [1, 2, 3]
    assert any(k.endswith("epoch_0003/state.pt") for k in keys(artifact_bucket, first))
    job_id = jobs.get_job_info(sub_id).job_id
    assert len(train_worker_nodes(two_nodes.dashboard, job_id)) == 3  # lost node, head, the new node
