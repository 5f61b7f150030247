"""What ``python -m pipeline.train`` prints on the driver: progress lines with the ETA and the result,
once each; none of Ray's and MLflow's start-up and per-report chatter (components/training/quiet.py)."""

from __future__ import annotations

import re

import pytest

from tests.train.conftest import TINY, project_dir, run_train, write_tiny_dataset

pytestmark = pytest.mark.slow

# Lines the libraries printed on every training before components/training/quiet.py: none says anything
# a user acts on (the full record stays in the Ray session's log files).
NOISE = (
    "Started a local Ray instance",  # ray.init
    "Requesting resources",  # Train controller
    "Attempting to start training worker group",
    "Started training worker group",
    "Setting up process group",  # Train worker
    "Moving model to device",
    "Checkpoint successfully created",  # per report
    "Reporting training result",
    "system_metrics_monitor",  # MLflow on rank 0: "Started monitoring system metrics", ...
    "Creating initial MLflow database tables",  # MLflow on the driver
    "Validating input example",
    "Downloading artifacts",  # MLflow's tqdm bars
    "PreemptionWatcher",  # core worker's error-level note on the watcher's constructor arguments
    "Token authentication is enabled",  # Ray 2.60 on each local start (RAY_AUTH_MODE unset)
    "Add type hints to the `predict` method",  # MLflow 3 on logging the pyfunc model
)


def test_train_prints_progress_and_the_result_without_library_chatter(tmp_path):
    proj = project_dir(tmp_path / "proj")
    root = str(proj / "store")
    write_tiny_dataset(root)
    out = proj / "out"
    res = run_train(
        proj,
        [
            *TINY,
            f"storage.root={root}",
            "prepare.name=tiny",
            "train.epochs=2",
            f"train.weights_out={out / 'g.pt'}",
            f"train.metrics_out={out / 'train.json'}",
            f"train.plots_out={out / 'epochs.csv'}",
        ],  # fmt: skip
        # RAY_AUTH_MODE as a new user has it (unset), whatever the session's Ray head fixture set
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "RAY_AUTH_MODE": None},
    )
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-4000:]
    # Ray forwards worker stdout to ours; each line once (Train's print patch copied it to stderr too)
    ends = re.findall(r"epoch (\d)/2 done in [^\n]*", text)
    assert ends == ["1", "2"], text[-4000:]
    assert re.findall(r"epoch (\d)/2 done in [^\n]*", res.stdout) == ends
    first = re.search(r"epoch 1/2 done in [^\n]*", text).group(0)
    assert "val fMSE" in first and "(composite" in first and re.search(r"ETA \d+ s", first), first
    assert re.search(r"epoch 2/2 done in [^\n]*finished", text)
    bars = re.findall(r"epoch 1/2 \[[#-]{20}\] step (\d+)/(\d+)", text)  # the bar within the epoch
    assert bars and len(bars) == len(set(bars)), bars
    assert re.search(r"^trained \S+ to epoch 2: val fMSE [\d.]+ \(composite [\d.]+\)", res.stdout, re.M)
    assert "MLflow run " in re.search(r"train key [^\n]*", text).group(0)  # the stage's own INFO stays
    assert [n for n in NOISE if n in text] == [], text[-4000:]
    assert (out / "headline" / "train.json").is_file()
