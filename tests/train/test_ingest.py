"""train.reader=ray_data (Ray Data + ray.train.get_dataset_shard) against the shard reader, on the real
Ray cluster fixture: both finish, log the same metrics and train on the same number of samples an epoch.
Ray Data reading the shards from S3 (two workers, a local Ray): tests/train/test_ingest_workers.py."""

from __future__ import annotations

import csv

import pytest
from mlflow import MlflowClient

from components.config import load_params
from components.errors import UserError
from components.training import launch
from tests.train.conftest import REPO, TINY, run_train


def train_with(reader: str, proj, root, ray_address: str | None) -> tuple[list[dict], set[str]]:
    """One tiny 2-epoch training with ``train.reader`` (on the Ray at ``ray_address``, else a local one);
    (per-epoch rows of the CSV, MLflow metric keys)."""
    out = proj / reader
    db = f"sqlite:///{out / 'mlflow.db'}"
    out.mkdir()
    args = [*TINY, f"storage.root={root}", "prepare.name=tiny", "train.epochs=2", f"train.reader={reader}",
            f"train.run_name=tiny-{reader}", f"train.weights_out={out / 'generator.pt'}",
            f"train.metrics_out={out / 'train.json'}", f"train.plots_out={out / 'epochs.csv'}"]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": db, **({"RAY_ADDRESS": ray_address} if ray_address else {})}
    res = run_train(proj, args, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    client = MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("harmonization-train").experiment_id])
    # system/* metrics come from MLflow's sampler, only when a run outlasts its period: timing, not training
    return rows, {k for k in run.data.metrics if not k.startswith("system/")}


def test_an_unknown_reader_is_a_user_error_naming_the_choices():
    with pytest.raises(UserError, match=r"train.reader='torch': expected one of shards, ray_data"):
        launch.validate(load_params(REPO / "params.yaml", ["train.reader=torch"]))


@pytest.mark.slow
def test_ray_data_reader_trains_on_the_same_samples_and_logs_the_same_metrics(tiny_local, ray_cluster):
    proj, root = tiny_local["proj"], tiny_local["root"]
    shard_rows, shard_metrics = train_with("shards", proj, root, ray_cluster["address"])
    ray_rows, ray_metrics = train_with("ray_data", proj, root, ray_cluster["address"])

    # 16 training rows, batches of 4, one worker: 4 full batches (16 samples) an epoch with either reader
    assert [int(r["step"]) for r in shard_rows] == [4, 8]
    assert [int(r["step"]) for r in ray_rows] == [int(r["step"]) for r in shard_rows]
    assert ray_metrics == shard_metrics
    assert {"val_fmse", "val_psnr", "train/loss_g"} <= ray_metrics
