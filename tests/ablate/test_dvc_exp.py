"""``dvc exp run --temp`` of one placement: the temporary workspace finds the project's shards and MLflow."""

from __future__ import annotations

import os

import pytest
import yaml
from mlflow import MlflowClient

from tests.train.test_dvc_train import BIN, clone_working_tree, sh

pytestmark = pytest.mark.slow


def test_dvc_exp_run_temp_of_one_placement(tmp_path):
    clone = tmp_path / "clone"
    clone_working_tree(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["prepare"].update(image_size=32, crops_per_photo=2, val_fraction=0.3, test_fraction=0.2,
                             sources=[{"kind": "builtin", "limit": 10}])  # fmt: skip
    params["model"]["generator"]["ngf"] = 4
    params["train"].update(epochs=1, decay_epochs=0, batch_size=4, num_workers=1, cpus_per_worker=1,
                           log_every_steps=2, sample_grid=0)  # fmt: skip
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RAY_ADDRESS"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
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
    assert any("rain-2" in d.name for d in (clone / "data" / "store" / "ray").iterdir())
    shown = sh([str(BIN / "dvc"), "exp", "show", "--json"], clone, env).stdout
    assert "rain-2" in shown
