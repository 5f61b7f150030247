"""Credentials never leave in a URL (issue 23, item 4): a password planted inside ``MLFLOW_TRACKING_URI``
is in no file of the Ray session (runtime-env agent log, worker logs, everything) and not on the console
of a real training on the session's Ray head and MLflow server; one inside ``AWS_ENDPOINT_URL`` is
refused before Ray starts; the project's log lines show URL user info as ``***``."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient

from components import credentials
from tests.train.conftest import TINY, read_json, run_train, tiny_local  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def outputs(proj: Path) -> list[str]:
    return [f"train.weights_out={proj / 'models' / 'generator.pt'}", f"train.metrics_out={proj / 'metrics' / 'train.json'}",
            f"train.plots_out={proj / 'metrics' / 'train_epochs.csv'}"]  # fmt: skip


def test_a_password_in_the_tracking_uri_reaches_no_ray_log_and_no_console(
    tiny_local, mlflow_server, ray_cluster  # noqa: F811
):
    password = f"planted-pw-{uuid.uuid4().hex[:10]}"
    url = urlsplit(mlflow_server)
    with_password = f"{url.scheme}://alice:{password}@{url.netloc}"
    proj = tiny_local["proj"]
    args = [*TINY, f"storage.root={tiny_local['root']}", "prepare.name=tiny", "train.epochs=1", *outputs(proj)]
    res = run_train(proj, args, env={"MLFLOW_TRACKING_URI": with_password, "RAY_ADDRESS": ray_cluster["address"],
                                     "MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None})  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_id = read_json(proj / "metrics" / "train.json")["run_id"]
    assert MlflowClient(mlflow_server).get_run(run_id).info.status == "FINISHED"  # it did track there

    assert password not in res.stdout and password not in res.stderr
    files = [p for p in Path(ray_cluster["temp_dir"]).rglob("*") if p.is_file() and not p.is_symlink()]
    assert [p for p in files if p.name == "runtime_env_agent.log"] and [p for p in files if p.name.startswith("worker-")]
    assert [str(p) for p in files if password.encode() in p.read_bytes()] == []
    data = MlflowClient(mlflow_server).get_run(run_id).data
    assert password not in str(data.params) + str(data.tags)


def test_credentials_in_an_s3_endpoint_url_are_refused_before_ray_starts(tiny_local):  # noqa: F811
    password = f"planted-pw-{uuid.uuid4().hex[:10]}"
    proj = tiny_local["proj"]
    args = [*TINY, f"storage.root={tiny_local['root']}", "prepare.name=tiny", "train.epochs=1", *outputs(proj)]
    res = run_train(proj, args, env={"AWS_ENDPOINT_URL": f"http://key:{password}@127.0.0.1:9",
                                     "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}"})  # fmt: skip
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert line.startswith("error: AWS_ENDPOINT_URL=http://***@127.0.0.1:9: credentials inside a URL are refused")
    assert password not in res.stdout + res.stderr
    assert not (proj / "models" / "generator.pt").exists()


def test_log_lines_and_tracebacks_show_no_url_user_info(caplog):
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # what the stage's console gets
    logger = logging.getLogger("test_credentials")
    logger.addHandler(handler)
    credentials.install_redaction(logger)
    try:
        logger.warning("cannot reach %s", "http://alice:s3cret@mlflow.example:5000/api")
        try:
            raise ConnectionError("HTTPConnectionPool: https://bob:t0ken@s3.example/bucket refused")
        except ConnectionError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "http://***@mlflow.example:5000/api" in text and "https://***@s3.example/bucket" in text
    assert "s3cret" not in text and "t0ken" not in text
