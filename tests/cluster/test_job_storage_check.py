"""A Ray job refuses storage and tracking that only exist on one machine; local runs are not affected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.errors import UserError
from components.training import remote
from tests.train.conftest import REPO, project_dir

JOB = {remote.JOB_ENV: '{"runtime_env": {}}'}


@pytest.mark.parametrize(
    "env, root, uri, bad",
    [
        (JOB, "s3://bucket/h", "http://mlflow:5000", None),
        (JOB, "s3://bucket/h", "postgresql+psycopg2://u@db/mlflow", None),
        (JOB, "data/store", "http://mlflow:5000", "storage.root=data/store"),
        (JOB, "file:///srv/store", "http://mlflow:5000", "storage.root=file:///srv/store"),
        (JOB, "s3://bucket/h", "sqlite:////abs/mlruns.db", "MLFLOW_TRACKING_URI=sqlite:////abs/mlruns.db"),
        (JOB, "s3://bucket/h", "file:///abs/mlruns", "MLFLOW_TRACKING_URI=file:///abs/mlruns"),
        ({"RAY_ADDRESS": "http://head.example.com:8265"}, "s3://b/h", "mlruns", "MLFLOW_TRACKING_URI=mlruns"),
        ({"RAY_ADDRESS": "10.0.0.5:6379"}, "data/store", "http://mlflow:5000", "storage.root=data/store"),
        # on this machine (no address, a local head, ray.init's own): dvc repro keeps its defaults
        ({}, "data/store", "sqlite:///mlruns.db", None),
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, "data/store", "sqlite:///mlruns.db", None),
        ({"RAY_ADDRESS": "http://localhost:8265"}, "data/store", "sqlite:///mlruns.db", None),
    ],
)
def test_rule(monkeypatch, env, root, uri, bad):
    for k in (remote.JOB_ENV, "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if bad is None:
        remote.check_shared(root, uri)
        return
    with pytest.raises(UserError, match=bad.replace("+", r"\+")):
        remote.check_shared(root, uri)


@pytest.mark.parametrize("stage", ["pipeline.train", "pipeline.ablate"])
def test_a_stage_in_a_job_with_the_laptop_defaults_exits_2_before_any_work(tmp_path, stage):
    """What a user sees after `ray job submit -- python -m pipeline.train` with params.yaml's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(JOB, PYTHONPATH=str(REPO))
    proj = project_dir(tmp_path / "job")  # what Ray unpacks: the project's params.yaml and code
    proc = subprocess.run([sys.executable, "-m", stage], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "MLFLOW_TRACKING_URI=sqlite:///" in lines[-1] and "shared MLflow server" in lines[-1]
    assert not (proj / "mlruns.db").exists()
