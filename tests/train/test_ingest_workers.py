"""train.reader=ray_data with two Ray Train workers: every training row once an epoch across the
workers (as the shard reader splits them), read from S3, validation run, the model saved; and a clear
error, not a hang, on a cluster whose CPUs all go to the workers."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from components.checkpoint import load_generator
from components.data.shards import ShardDataset
from components.training import ingest
from tests.train.conftest import PY, REPO, TINY, project_dir, run_train, write_tiny_dataset

pytestmark = pytest.mark.slow

N_TRAIN, BATCH, WORKERS, SEED = 16, 4, 2, 0  # write_tiny_dataset's training rows; TINY's batch


@pytest.fixture
def tiny(tmp_path) -> dict:
    proj = project_dir(tmp_path / "proj")
    manifest = write_tiny_dataset(str(proj / "store"))
    return {
        "proj": proj,
        "root": str(proj / "store"),
        "train": [s["uri"] for s in manifest["shards"]["train"]],
    }


def args_for(tiny: dict, *extra: str) -> list[str]:
    out = tiny["proj"] / "out"
    return [*TINY, f"storage.root={tiny['root']}", "prepare.name=tiny", "train.reader=ray_data",
            f"train.num_workers={WORKERS}", f"train.seed={SEED}", f"train.weights_out={out / 'generator.pt'}",
            f"train.metrics_out={out / 'train.json'}", f"train.plots_out={out / 'epochs.csv'}", *extra]  # fmt: skip


def test_two_workers_train_on_every_row_from_s3_validate_and_save_the_model(s3_bucket, tmp_path):
    """``python -m pipeline.train`` on a local Ray (the stage starts it: 2 worker CPUs + 1 for Ray Data),
    storage.root on S3 (moto): Ray Data's read tasks reach the bucket through the configured endpoint. A
    local Ray: its workers inherit this test's moto credentials, as a cluster's nodes would have their own
    (instance roles, a Kubernetes secret)."""
    write_tiny_dataset(s3_bucket)
    tiny = {"proj": project_dir(tmp_path / "proj"), "root": s3_bucket}
    proj, db = tiny["proj"], f"sqlite:///{tiny['proj'] / 'mlflow.db'}"
    res = run_train(proj, args_for(tiny, "train.epochs=2"), env={"MLFLOW_TRACKING_URI": db})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    with open(proj / "out" / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    per_epoch = N_TRAIN // (WORKERS * BATCH)  # each worker's full batches of its half of the rows
    assert [int(r["step"]) for r in rows] == [per_epoch, 2 * per_epoch]  # all 16 rows an epoch, 2 x 2 x 4
    assert all(float(r["val_fmse"]) > 0 and float(r["composite_fmse"]) > 0 for r in rows)  # validated
    client = MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("harmonization-train").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_fmse")) == [1, 2]
    assert run.data.params["train.reader"] == "ray_data" and run.data.params["train.num_workers"] == "2"
    _, info = load_generator(str(proj / "out" / "generator.pt"))
    assert info["meta"]["epoch"] == 2 and info["meta"]["run_id"] == run.info.run_id
    assert run.data.tags["model_epoch"] == "2"  # the run's MLflow model is that epoch's generator


def digest(composite) -> str:
    return hashlib.sha256(composite.numpy().tobytes()).hexdigest()


def ray_data_parts(uris: list[str], epochs: int) -> dict[str, list[str]]:
    """In a process of its own (``RAY_ADDRESS`` set; a Ray re-initialized in the test process after another
    test's local Ray could not place the split coordinator): the composites' digests each of the two
    ranks reads per epoch, keyed ``"epoch,rank"``."""
    import ray

    ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    splits = ingest.train_dataset(uris, None, SEED).streaming_split(WORKERS, equal=True)

    def read(epoch: int, rank: int) -> list[str]:
        batches = ingest.epoch_batches(splits[rank], BATCH, False, SEED, rank, epoch)
        return [digest(c) for b in batches for c in b["composite"]]

    parts = {}
    for epoch in range(1, epochs + 1):  # the ranks read an epoch together, as the workers do
        with ThreadPoolExecutor(WORKERS) as pool:
            for rank, part in enumerate(pool.map(lambda r, e=epoch: read(e, r), range(WORKERS))):
                parts[f"{epoch},{rank}"] = part
    return parts


def test_each_worker_reads_its_own_half_of_the_rows_every_epoch(tiny, ray_cluster):
    """What ``ray.train.get_dataset_shard`` hands the two workers (Ray Train's ``streaming_split(2,
    equal=True)`` of the reader's dataset, read through ``ingest.epoch_batches``) beside the shard
    reader's two ranks: both readers give each rank 8 different rows an epoch and all 16 between them."""
    ids = {}  # composite digest -> sample_id, and the shard reader's rows per (epoch, rank)
    shard_parts = {}
    for epoch in (1, 2):
        for rank in range(WORKERS):
            ds = ShardDataset(tiny["train"], rank=rank, world_size=WORKERS, seed=SEED)
            ds.set_epoch(epoch)
            rows = list(ds)
            ids.update({digest(r["composite"]): r["sample_id"] for r in rows})
            shard_parts[epoch, rank] = [r["sample_id"] for r in rows]
    assert len(ids) == N_TRAIN

    out = tiny["proj"] / "ray_data_parts.json"  # not stdout: Ray forwards its workers' lines there too
    code = (
        f"import json, pathlib; from {__name__} import ray_data_parts as p; "
        f"pathlib.Path({str(out)!r}).write_text(json.dumps(p({tiny['train']!r}, 2)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_cluster["address"]}
    res = subprocess.run([PY, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    digests = json.loads(out.read_text())
    ray_parts = {tuple(map(int, k.split(","))): [ids[d] for d in v] for k, v in digests.items()}

    for parts in (shard_parts, ray_parts):
        for epoch in (1, 2):
            halves = [parts[epoch, rank] for rank in range(WORKERS)]
            assert [len(h) for h in halves] == [N_TRAIN // WORKERS] * WORKERS, parts
            assert sorted(halves[0] + halves[1]) == sorted(ids.values()), parts  # each row once
    assert ray_parts[1, 0] != ray_parts[2, 0]  # reshuffled between epochs


def test_a_cluster_without_a_cpu_for_ray_data_is_a_user_error(tiny, ray_cluster):
    """The cluster fixture's 2 CPUs all go to two 1-CPU workers: Ray Data could never read (training hung
    until the test's timeout); the stage says so before the MLflow run exists."""
    db = f"sqlite:///{tiny['proj'] / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": db, "RAY_ADDRESS": ray_cluster["address"]}
    res = run_train(tiny["proj"], args_for(tiny, "train.epochs=1"), env=env, timeout=180)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert "train.reader=ray_data needs a CPU for Ray Data" in line and "the Ray cluster has 2" in line
    assert "train.reader=shards" in line
    exp = MlflowClient(db).get_experiment_by_name("harmonization-train")
    assert exp is None or not MlflowClient(db).search_runs([exp.experiment_id])
