"""Item 4 through the real CLI: bad params, a missing bucket and a missing GPU stop ``pipeline.train``
with exit 2 and one clear line, before Ray starts and before any MLflow run exists."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
import torch

from components.config import load_params
from tests.train.conftest import REPO, TINY, project_dir, run_train, tiny_local  # noqa: F401 - fixture


def runs_in(db) -> list[tuple[str, str]]:
    """(name, status) of every MLflow run in the sqlite file (none when the file was never created)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select name, status from runs").fetchall()
        except sqlite3.OperationalError:  # no tables yet
            return []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=-1", "train.epochs=-1: expected 0 or more"),
        ("train.batch_size=0", "train.batch_size=0: expected at least 1"),
        ("train.lr=0", "train.lr=0.0: expected a number greater than 0 that float32 holds (<= 3.4e38)"),
        ("train.lr=1e39", "train.lr=1e+39: expected a number greater than 0 that float32 holds (<= 3.4e38)"),
        ("train.num_workers=0", "train.num_workers=0: expected at least 1"),
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
        ("train.lambda_l1=.nan", "train.lambda_l1: expected a finite number, got nan"),  # no range: still refused
    ],
)
def test_bad_params_exit_2_with_one_line(tmp_path, override, message):
    proj = project_dir(tmp_path)
    res = run_train(proj, [f"storage.root={proj}", override], env={"MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'm.db'}"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == f"error: params.yaml: {message}", res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert runs_in(proj / "m.db") == []


def test_lr_written_as_1e9_is_the_number_everywhere():
    """YAML 1.1 reads ``1e9`` (no dot) as a string; a float field takes it as the number, as a user means."""
    p = load_params(REPO / "params.yaml", ["train.lr=1e9", "train.beta1=5e-1"])
    assert p.train.lr == 1e9 and isinstance(p.train.lr, float) and p.train.beta1 == 0.5


def test_missing_bucket_exit_2_before_any_compute(moto_endpoint, tmp_path):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "m.db"
    res = run_train(project_dir(tmp_path), [*TINY, f"storage.root=s3://{bucket}/harmonization"],
                    env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: storage.root=s3://{bucket}/harmonization: bucket '{bucket}' does not exist"
    )
    assert runs_in(db) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_use_gpu_without_a_gpu_exit_2_and_no_run_left_running(tiny_local):  # noqa: F811
    proj, db = tiny_local["proj"], tiny_local["proj"] / "m.db"
    res = run_train(proj, [*TINY, f"storage.root={tiny_local['root']}", "prepare.name=tiny", "train.use_gpu=true"],
                    env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == (
        "error: train.use_gpu=true needs 1 GPU(s) (1 workers x 1) but CUDA on this machine has 0; set "
        "train.use_gpu=false or run on a GPU machine (RAY_ADDRESS for a cluster)"
    )
    assert [status for _, status in runs_in(db)] == []  # no run created, so none left RUNNING
