"""Training survives a tracking outage (issue 23, item 5): a real MLflow server is killed (SIGKILL) after
epoch 1 and started again later on the same port and store. Deterministic: the training waits at a gate
after each epoch (``HARMONIZE_GATE_DIR``) until the test has done what it does between two epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.training.loop import GATE_ENV, STATE_FILE
from tests.conftest import BIN, _start, _stop, free_port, wait_http
from tests.train.conftest import PY, REPO, TINY, tiny_local  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

EPOCHS = 3


class Server:
    """``mlflow server`` on one port and one store, which the test kills and starts again."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]  # fmt: skip
        log = self.root / f"server-{self.starts}.log"
        self.proc = _start(cmd, log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_http(f"{self.url}/health", timeout=300, proc=self.proc)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "mlflow")
    s.root.mkdir()
    s.start()
    yield s
    s.stop()


def start_train(tiny_local, server: Server, gate: Path, ray_address: str) -> subprocess.Popen:  # noqa: F811
    proj = tiny_local["proj"]
    args = [*TINY, f"storage.root={tiny_local['root']}", "prepare.name=tiny", f"train.epochs={EPOCHS}",
            "train.max_failures=0", f"train.checkpoints_to_keep={EPOCHS}", f"train.weights_out={proj / 'models' / 'generator.pt'}",
            f"train.metrics_out={proj / 'metrics' / 'train.json'}",
            f"train.plots_out={proj / 'metrics' / 'train_epochs.csv'}"]  # fmt: skip
    cmd = [PY, "-m", "pipeline.train", *[x for a in args for x in ("-S", a)]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ray_address,
           "MLFLOW_TRACKING_URI": server.url, GATE_ENV: str(gate), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}  # fmt: skip
    return subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until the training says it reached ``path`` (it waits there), or fails."""
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training exited {proc.returncode} before {path.name}:\n{out[-3000:]}\n{err[-5000:]}")
        time.sleep(0.2)


def checkpoints(root: str) -> list[str]:
    ray_dir = Path(root, "ray")
    return sorted(p.parent.name for p in ray_dir.rglob(STATE_FILE))


def the_run(client: MlflowClient):
    (run,) = client.search_runs([client.get_experiment_by_name("harmonization-train").experiment_id])
    return run


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_fmse"))


def test_an_mlflow_outage_mid_training_delays_the_metrics_and_loses_nothing(
    tiny_local, server, tmp_path, ray_cluster  # noqa: F811
):
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = start_train(tiny_local, server, gate, ray_cluster["address"])
    try:
        wait_for(gate / "epoch_1.done", proc)
        client = MlflowClient(server.url)
        run_id = the_run(client).info.run_id
        assert epochs_logged(client, run_id) == [1]
        server.kill()  # the tracking server dies after epoch 1
        (gate / "epoch_1.go").touch()
        wait_for(gate / "epoch_2.done", proc)  # epoch 2 trained while the server was away
        assert checkpoints(tiny_local["root"]) == ["epoch_0001", "epoch_0002"]
        server.start()  # back, same port and store
        (gate / "epoch_2.go").touch()
        (gate / "epoch_3.go").touch()
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    assert "does not answer" in err and "the metrics kept since epoch 2 are logged" in err
    client = MlflowClient(server.url)
    run = the_run(client)
    assert epochs_logged(client, run.info.run_id) == [1, 2, 3]  # every epoch once
    assert checkpoints(tiny_local["root"]) == ["epoch_0001", "epoch_0002", "epoch_0003"]
    assert run.info.status == "FINISHED" and run.data.tags["model_epoch"] == str(EPOCHS)


def test_a_tracker_that_never_returns_ends_with_checkpoints_and_a_clear_message(
    tiny_local, server, tmp_path, ray_cluster  # noqa: F811
):
    gate = tmp_path / "gate"
    gate.mkdir()
    for epoch in range(2, EPOCHS + 1):
        (gate / f"epoch_{epoch}.go").touch()
    proc = start_train(tiny_local, server, gate, ray_cluster["address"])
    try:
        wait_for(gate / "epoch_1.done", proc)
        server.kill()
        (gate / "epoch_1.go").touch()
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:] + err[-5000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert "is done and checkpointed under" in line and "does not answer" in line
    assert "Rerun the same command once MLflow answers" in line
    assert "epoch(s) 2, 3 of run" in err  # the worker's line: what was not logged
    assert checkpoints(tiny_local["root"]) == ["epoch_0001", "epoch_0002", "epoch_0003"]

    # The server returns; the same command logs what was missing without training again.
    server.start()
    (gate / "rerun").mkdir()
    proc = start_train(tiny_local, server, gate / "rerun", ray_cluster["address"])
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    client = MlflowClient(server.url)
    run = the_run(client)
    assert epochs_logged(client, run.info.run_id) == [1, 2, 3]
    assert checkpoints(tiny_local["root"]) == ["epoch_0001", "epoch_0002", "epoch_0003"]
    assert run.data.tags["model_epoch"] == str(EPOCHS)
