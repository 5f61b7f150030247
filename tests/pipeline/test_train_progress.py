"""What ``python -m pipeline.train`` prints on the driver: progress lines with the ETA, no start-up chatter."""

from __future__ import annotations

import re

import pytest

from tests.train.conftest import TINY, project_dir, run_train, write_tiny_dataset

pytestmark = pytest.mark.slow


def test_train_prints_a_line_per_epoch_with_eta(tmp_path):
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
            "train.sample_grid=0",
            f"train.weights_out={out / 'g.pt'}",
            f"train.metrics_out={out / 'train.json'}",
            f"train.plots_out={out / 'epochs.csv'}",
        ],  # fmt: skip
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}"},
    )
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-4000:]
    ends = re.findall(r"epoch (\d)/2 done in [^\n]*", res.stdout)  # Ray forwards worker stdout to ours
    assert ends == ["1", "2"], (re.findall(r"epoch (\d)/2 done in [^\n]*", res.stderr), res.stdout[-3000:])
    first = re.search(r"epoch 1/2 done in [^\n]*", text).group(0)
    assert "val fMSE" in first and "(composite" in first and re.search(r"ETA \d+ s", first), first
    assert re.search(r"epoch 2/2 done in [^\n]*finished", text)
    assert re.search(r"epoch 1/2 \[[#-]{20}\] step \d+/\d+", text)  # the bar within the epoch
    assert "Started a local Ray instance" not in text  # Ray's start-up INFO is filtered
    assert (out / "headline" / "train.json").is_file()
