"""A small cluster on 127.0.0.1 for the cluster tests: PostgreSQL, MLflow on it with proxied artifacts on
the moto S3 server, and a Ray head plus a second Ray node joined with ``ray start --address``.

Every server runs in its own process group and temp folder and is stopped in a ``finally``, also when
a test fails. The Ray nodes start with the S3 credentials of the moto fixture: the nodes' own
credentials, which a job never carries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    BIN,
    LOOPBACK_ONLY_ENV,
    RAY_NODE_ENV,
    _start,
    _stop,
    free_port,
    serve_mlflow,
    wait_http,
)

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)), None)
RAY_PORT_FLAGS = (
    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
    "runtime-env-agent-port", "node-manager-port", "object-manager-port",
)  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
# A private cluster on 127.0.0.1: no token auth. The nodes import this checkout's code (an image
# built from it, on a real cluster) for the functions a driver outside a job sends them.
# A multi-node cluster (nodes joining a head; the token-auth head stands for one): Ray's cluster mode, even
# when the suite's single-machine head has set the loopback switch in this process's environment. Its
# nodes listen on the machine's network address, as a real cluster's do on theirs (docs/CLUSTER.md).
NODE_ENV = {**RAY_NODE_ENV, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), LOOPBACK_ONLY_ENV: "1"}


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres() -> str:
    """A fresh PostgreSQL (``initdb`` in a temp folder) on 127.0.0.1; yields its SQLAlchemy URL."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    bin_dir = PG_BIN.parent
    root = Path(tempfile.mkdtemp(prefix="pg_"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
                   check=True, capture_output=True)  # fmt: skip
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log")]
    try:
        subprocess.run(_as_postgres([*ctl, "-w", "-o", f"-p {port} -k {root} -h 127.0.0.1", "start"]),
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(_as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                     "-U", "postgres", "mlflow"]), check=True, capture_output=True)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def artifact_bucket(moto_endpoint) -> str:
    """The bucket the cluster shares: shards, checkpoints, MLflow artifacts, the DVC remote."""
    import boto3

    name = f"cluster-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def shared_mlflow(postgres, artifact_bucket, moto_endpoint, tmp_path_factory) -> str:
    """``mlflow server`` on the PostgreSQL backend, artifacts proxied to ``s3://<bucket>/mlartifacts``."""
    root = tmp_path_factory.mktemp("shared_mlflow")
    artifacts = f"s3://{artifact_bucket}/mlartifacts"
    env = {"MLFLOW_S3_ENDPOINT_URL": moto_endpoint}
    with serve_mlflow(postgres, artifacts, root / "mlflow.log", "--serve-artifacts", env=env, timeout=240) as url:
        yield url


def ray_node(temp_dir: Path, *, head_port: int | None = None, address: str | None = None) -> list[str]:
    """``ray start --block`` for a head (``head_port``) or a node joining ``address``: 1 CPU, own ports."""
    cmd = [
        str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
        "--object-store-memory=100000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        *(f"--{flag}={free_port()}" for flag in RAY_PORT_FLAGS),
    ]  # fmt: skip
    if head_port is not None:
        return [*cmd, "--head", f"--port={head_port}", f"--ray-client-server-port={free_port()}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]  # fmt: skip
    return [*cmd, f"--address={address}"]


def alive_nodes(dashboard: str) -> list[dict]:
    """The cluster's ALIVE nodes from the Ray state API."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=100", timeout=10) as r:
        nodes = json.loads(r.read())["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


class Nodes:
    """A Ray head and worker nodes on 127.0.0.1, each in its own temp folder and process group."""

    def __init__(self, logs: Path):
        self.logs, self.procs, self.temp_dirs = logs, [], []
        self.address = self.dashboard = ""

    def start_head(self) -> None:
        port = free_port()
        head_cmd = ray_node(self._temp_dir(), head_port=port)
        dash = next(a.split("=")[1] for a in head_cmd if a.startswith("--dashboard-port="))
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        self.procs.append(_start(head_cmd, self.logs / "head.log", env=NODE_ENV))
        wait_http(f"{self.dashboard}/api/version", timeout=300, proc=self.procs[0])

    def _temp_dir(self) -> Path:
        self.temp_dirs.append(Path("/tmp") / f"ray_{len(self.temp_dirs)}_{uuid.uuid4().hex[:6]}")
        return self.temp_dirs[-1]

    def join(self) -> subprocess.Popen:
        """Start one more node with ``ray start --address`` and wait until the cluster lists it ALIVE."""
        want = len(alive_nodes(self.dashboard)) + 1
        log = self.logs / f"node{len(self.procs)}.log"
        proc = _start(ray_node(self._temp_dir(), address=self.address), log, env=NODE_ENV)
        self.procs.append(proc)
        deadline = time.monotonic() + 300
        while len(alive_nodes(self.dashboard)) < want:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray node did not join: {log.read_text()[-2000:]}")
            time.sleep(1)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc, timeout=60)
        for d in self.temp_dirs:
            with contextlib.suppress(OSError):
                shutil.rmtree(d)


@pytest.fixture(scope="module")
def two_nodes(moto_endpoint, tmp_path_factory) -> Nodes:
    """A Ray head and a second node (1 CPU each) on 127.0.0.1, both started with the moto credentials;
    ``join()`` adds a node (stopped with the others at the end)."""
    nodes = Nodes(tmp_path_factory.mktemp("ray_nodes"))
    try:
        nodes.start_head()
        nodes.join()
        yield nodes
    finally:
        nodes.stop()
