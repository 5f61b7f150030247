"""S3 faults for real: a writer killed mid multipart upload, and an S3 server paused (SIGSTOP) mid-write.

Each test starts its own moto server (the session one must not be paused). The writers are child
processes running the product's ``Store.write_bytes``; a botocore event hook (``before-send``
of the first ``UploadPart``) picks the moment, so nothing depends on timing: the paused server fails the
write through a 2 s botocore timeout, not a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import boto3
import pytest

from components.data.dataset import open_dataset
from components.storage import Store
from tests.conftest import BIN, REPO, _start, _stop, free_port, wait_http
from tests.prepare.conftest import SMALL, run_prepare

WRITER = """
import os, signal, sys
import boto3
from components.storage import Store

action = sys.argv[2]

def fault(**_):
    if action == "kill-self":
        os.kill(os.getpid(), signal.SIGKILL)
    os.kill(int(action), signal.SIGSTOP)  # pause the S3 server itself

boto3.setup_default_session()
boto3.DEFAULT_SESSION.events.register("before-send.s3.UploadPart", fault)
Store().write_bytes(sys.argv[1], os.urandom(20 << 20))  # > 8 MB: a multipart upload
"""


@pytest.fixture
def own_moto(tmp_path, monkeypatch):
    port = free_port()
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], tmp_path / "moto.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc=proc)
        for k, v in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                         AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url).items():  # fmt: skip
            monkeypatch.setenv(k, v)
        yield url, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # a paused server must be able to stop
        _stop(proc)


def _write(uri: str, action: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "HARMONIZE_S3_TIMEOUT_S": "2", "AWS_MAX_ATTEMPTS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), uri, action], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_unfinished_uploads_are_aborted_and_the_published_dataset_survives(own_moto, tmp_path):
    url, moto = own_moto
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/store"
    store = Store(root, endpoint_url=url)
    first = run_prepare(tmp_path / "a", *SMALL, f"storage.endpoint_url={url}", root=root)
    staging = f"{root}/datasets/default/v-unfinished"

    killed = _write(f"{staging}/train-00000.parquet", "kill-self", tmp_path)  # writer killed mid-upload
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    paused = _write(f"{staging}/train-00001.parquet", str(moto.pid), tmp_path)  # server paused mid-upload
    assert paused.returncode != 0 and "timeout" in paused.stderr.lower(), paused.stderr[-2000:]
    os.kill(moto.pid, signal.SIGCONT)  # the server comes back

    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads and all(u["Key"].startswith("store/datasets/default/v-unfinished/") for u in uploads)
    ds = open_dataset(store, "default")  # the published dataset is untouched and verifies
    assert ds.version == first["version"] and ds.content_hash == first["content_hash"]

    second = run_prepare(tmp_path / "b", *SMALL, "prepare.seed=1", f"storage.endpoint_url={url}", root=root)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="store/")["Contents"]}
    listed = {s["uri"].removeprefix(f"s3://{bucket}/") for v in second["shards"].values() for s in v}
    assert {k for k in keys if not k.endswith("/")} == listed | {"store/datasets/default/manifest.json"}
    assert open_dataset(store, "default").content_hash == second["content_hash"] != first["content_hash"]
