"""``dvc exp run --temp`` of one placement: the temporary workspace gets the dataset from DVC (prepare's
output) and tracks into the project's MLflow."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.train.test_dvc_train import BIN, sh, tiny_project

pytestmark = pytest.mark.slow


def test_dvc_exp_run_temp_of_one_placement(tmp_path):
    clone = tmp_path / "clone"
    env = tiny_project(clone, sample_grid=0)
    sh(["git", "init", "-q"], clone, env)
    sh([str(BIN / "dvc"), "repro", "prepare"], clone, env, timeout=300)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "clone + prepare"], clone, env)

    sh([str(BIN / "dvc"), "exp", "run", "--temp", "-S", "model.generator.placement=rain-2", "train"], clone, env,
       timeout=480)  # fmt: skip
    client = MlflowClient(f"sqlite:///{clone / 'mlruns.db'}")  # the project's database, not the temp copy's
    exp = client.get_experiment_by_name("harmonization-train")
    runs = client.search_runs([exp.experiment_id])
    assert [r.data.tags["placement"] for r in runs] == ["rain-2"]
    assert runs[0].info.status == "FINISHED"
    shown = sh([str(BIN / "dvc"), "exp", "show", "--json"], clone, env).stdout
    assert "rain-2" in shown and "metrics/headline/train.json" in shown and "val_fmse" in shown
