"""Items 5 and 6 end to end (``python -m pipeline.train``, MLflow in sqlite), each fault injected for
real: an lr that overflows the float32 weights (the loss turns NaN), truncated checkpoint files, a driver
killed with SIGKILL in the middle of training. The first two run on the session's Ray head (a Ray on this
machine, as ``RAY_ADDRESS=127.0.0.1:PORT``: no Ray start and stop per command); the killed driver starts
its own local Ray, which dies with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
from mlflow import MlflowClient

from components.checkpoint import HASH_SUFFIX, read_verified
from components.training.loop import PAUSE_ENV, STATE_FILE, newest_state
from tests.train.conftest import PY, REPO, TINY, read_json, run_train, tiny_local  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def setup(tiny_local, *extra: str, ray_address: str | None = None):  # noqa: F811
    proj = tiny_local["proj"]
    db = f"sqlite:///{proj / 'mlflow.db'}"
    args = [*TINY, f"storage.root={tiny_local['root']}", "prepare.name=tiny", "train.max_failures=0",
            f"train.weights_out={proj / 'models' / 'generator.pt'}",
            f"train.metrics_out={proj / 'metrics' / 'train.json'}",
            f"train.plots_out={proj / 'metrics' / 'train_epochs.csv'}", *extra]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": db, **({"RAY_ADDRESS": ray_address} if ray_address else {})}
    return proj, args, env, MlflowClient(db)


def the_run(client: MlflowClient):
    exp = client.get_experiment_by_name("harmonization-train")
    (run,) = client.search_runs([exp.experiment_id])
    return run


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_fmse"))


def test_diverging_loss_stops_with_a_clear_error_and_nothing_is_saved(tiny_local, ray_cluster):  # noqa: F811
    # lr 1e38 makes Adam's first steps overflow to Inf (with beta1 0.9 its lr / (1 - beta1) is past
    # float32's range before any loss is computed: torch raises instead, so beta1 stays 0.5 here)
    proj, args, env, client = setup(tiny_local, "train.epochs=2", "train.lr=1e38", "train.beta1=0.5",
                                    "train.max_nonfinite_steps=2", ray_address=ray_cluster["address"])  # fmt: skip
    res = run_train(proj, args, env=env)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]  # Ray's log lines around it
    assert line.startswith("error: training ") and "non-finite loss (NaN/Inf) in 2 steps in a row" in line
    assert "lower train.lr" in line
    run = the_run(client)
    assert run.info.status == "FAILED"
    skipped = [v for k, v in run.data.metrics.items() if k.endswith("nonfinite_steps")]
    assert skipped and skipped[0] >= 2
    assert "model_epoch" not in run.data.tags  # no MLflow model logged
    assert not (proj / "models" / "generator.pt").exists()
    assert not (proj / "metrics" / "train.json").exists()


def test_truncated_checkpoints_fall_back_and_a_finished_run_stays_finished(tiny_local, ray_cluster):  # noqa: F811
    proj, args, env, client = setup(tiny_local, "train.epochs=2", ray_address=ray_cluster["address"])
    first = run_train(proj, args, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (key_dir,) = list((proj / "store" / "ray").iterdir())
    states = [key_dir / f"epoch_{e:04d}" / STATE_FILE for e in (1, 2)]
    for path in states:
        assert (path.parent / (STATE_FILE + HASH_SUFFIX)).is_file()
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk

    # Every checkpoint damaged: no silent restart from epoch 1, an error naming the folder (exit 2),
    # before anything trains; the FINISHED run stays FINISHED, the reason in a tag.
    refused = run_train(proj, args, env=env)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {key_dir}: every checkpoint is damaged (2: ") and "restart_if_damaged" in line
    run = the_run(client)
    assert run.info.status == "FINISHED" and "every checkpoint is damaged" in run.data.tags["last_attempt_error"]
    assert sorted(p.name for p in key_dir.glob("epoch_*")) == ["epoch_0001", "epoch_0002"]  # nothing trained

    # Asked for (train.restart_if_damaged), a rerun starts over; one that fails (injected after epoch 1)
    # leaves the earlier FINISHED run FINISHED, with the failure as a tag.
    args = [*args, "train.restart_if_damaged=true"]
    failed = run_train(proj, args, env={**env, "HARMONIZE_FAULT_AFTER_EPOCH": "1"})
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert f"skipping a damaged checkpoint: {states[1]}: sha256" in out
    assert f"skipping a damaged checkpoint: {states[0]}: sha256" in out
    run = the_run(client)
    assert run.info.status == "FINISHED"
    assert "injected failure after epoch 1" in run.data.tags["last_attempt_error"]

    # The failed attempt saved epoch 1 again, under a new name (Ray deletes old checkpoints by its own
    # record: a reused name would lose the new one); epoch 2 is still truncated: resume from the new 1.
    redone = key_dir / "epoch_0001.r1"
    read_verified(str(redone / STATE_FILE))
    again = run_train(proj, args, env=env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert f"skipping a damaged checkpoint: {states[1]}: sha256" in out
    assert f"resuming from {redone} (epoch 1)" in out
    assert read_json(proj / "metrics" / "train.json")["epochs_done"] == 2
    folder, state, _ = newest_state(str(key_dir))  # epoch 2 trained again and saved whole
    assert state["epoch"] == 2 and folder == str(key_dir / "epoch_0002.r1")
    run = the_run(client)
    assert run.info.status == "FINISHED" and epochs_logged(client, run.info.run_id) == [1, 2]


def test_driver_killed_mid_training_resumes_from_the_newest_checkpoint_on_disk(tiny_local, ray_cluster):  # noqa: F811
    """The driver (and the local Ray in its process group) is killed while the worker waits after epoch 2
    (``HARMONIZE_PAUSE_AFTER_EPOCH=2``): mid-training however fast the epochs go. The rerun resumes on the
    session's Ray head: what it resumes from is on disk, whichever Ray runs it (no second Ray start)."""
    proj, args, env, client = setup(tiny_local, "train.epochs=4")
    cmd = [PY, "-m", "pipeline.train", *[a for o in args for a in ("-S", o)]]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **env, PAUSE_ENV: "2"}
    driver = subprocess.Popen(cmd, cwd=proj, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own process group: the local Ray dies with it
    ray_dir = proj / "store" / "ray"

    def newest_epoch() -> int:  # of an intact checkpoint (its sha256 checked), 0 while there is none
        dirs = list(ray_dir.iterdir()) if ray_dir.is_dir() else []
        state = newest_state(str(dirs[0]))[1] if dirs else None
        return state["epoch"] if state else 0

    try:
        while newest_epoch() < 2:  # epoch 2 saved whole; the worker waits after it
            try:
                driver.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"the driver exited ({driver.returncode}) before epoch 2 was saved")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    (key_dir,) = list(ray_dir.iterdir())
    saved = newest_epoch()
    assert saved == 2

    res = run_train(proj, args, env={**env, "RAY_ADDRESS": ray_cluster["address"]})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    resumed = re.search(rf"resuming from {re.escape(str(key_dir))}/epoch_(\d+) \(epoch (\d+)\)", out)
    assert resumed and int(resumed[1]) == int(resumed[2]) >= saved, out[-4000:]
    summary = read_json(proj / "metrics" / "train.json")
    assert summary["epochs_done"] == 4
    run = the_run(client)
    assert run.info.status == "FINISHED" and epochs_logged(client, run.info.run_id) == [1, 2, 3, 4]
