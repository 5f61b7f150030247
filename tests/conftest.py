"""Real services for the tests: a moto S3 server, a Ray head and an MLflow server, all on 127.0.0.1.

Each is started once per session on a free port, only when a test asks for it, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The shared real-photo set; HARMONIZE_LALONDE points elsewhere (a path that does not exist runs the
# suite as a fresh clone without ../shared would: the lalonde tier skips, everything else runs).
LALONDE = Path(os.environ.get("HARMONIZE_LALONDE") or REPO.parent / "shared" / "data" / "lalonde")
BIN = Path(sys.executable).parent
# The environment of every ``ray start --block`` the tests run. Ray 2.60 drains a node for up to 30 s
# on SIGTERM (for Serve replicas on Kubernetes); a test cluster's nodes have nothing to drain, and
# their GCS gets the same SIGTERM, so the drain only waited out its timeout at every teardown.
RAY_NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
# Ray's switch for a single-machine Ray, every listener on 127.0.0.1 (components.training.launch sets it
# for the stages' local Ray): "0" for the suite's single head and its clients, "1" for multi-node clusters.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray Train's controller looks at its workers every 2 s by default, so each of the suite's trainings
# learned of its end, a failure or an epoch's report (what Tune and ASHA act on) up to 2 s late. Set
# here, it reaches every stage the tests start (and the Ray nodes): they all inherit this environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


# Fixtures that start a server or a Ray node, or train models: a test that uses one (directly or through
# another fixture) is in the slow tier whether or not it says so, so ``-m "not slow"`` is the quick tier
# of in-process checks (docs/TESTING.md).
SLOW_FIXTURES = frozenset({
    "moto_endpoint", "ray_cluster", "mlflow_server", "postgres", "two_nodes", "token_head", "generators",
})  # fmt: skip


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now and never handed out before in this session: the OS may return a port
    it just released, so two calls in a row (one server's several listeners) could get the same one and
    the server would refuse to start (Ray: "trying to use a port number ... used by other components")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # own process group: teardown kills the server and its children
    )


def restore_env(saved: dict[str, str | None]) -> None:
    """Put the variables of ``saved`` (name -> value, None for unset) back into ``os.environ``."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_uris_kept():
    """On exit, MLflow's tracking and registry URIs as on entry: its process-wide settings (what
    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` set) and the two variables those setters export
    to ``os.environ``. ``mlflow.get_tracking_uri()`` cannot be used to save them: it returns a default
    (``sqlite:///<cwd>/mlflow.db``) when none is set, and setting that back pins every later test to it."""

    def settings() -> tuple[str | None, str | None]:  # None while MLflow is not imported: nothing set
        tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
        registry = sys.modules.get("mlflow.tracking._model_registry.utils")
        return getattr(tracking, "_tracking_uri", None), getattr(registry, "_registry_uri", None)

    env, before = {k: os.environ.get(k) for k in MLFLOW_ENV}, settings()
    try:
        yield
    finally:
        if settings() != before:
            import mlflow
            from mlflow.tracking._model_registry import utils as registry

            mlflow.set_tracking_uri(before[0])
            registry._registry_uri = before[1]  # set_registry_uri(None) would keep the exported variable
        restore_env(env)


@pytest.fixture(autouse=True)
def _mlflow_uris():
    """Every test leaves MLflow pointed where it found it: a test (or stage run in-process) that
    configures MLflow changes process-wide state that later tests, and the subprocesses they start with
    ``os.environ``, would otherwise inherit."""
    with mlflow_uris_kept():
        yield


@pytest.fixture(scope="session")
def lalonde() -> Path:
    """The shared real-photo data set (development data; the product itself never needs it)."""
    if not (LALONDE / "photos").is_dir():
        pytest.skip(f"shared data not found at {LALONDE}")
    return LALONDE


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """A real S3 endpoint (moto's server) on 127.0.0.1; AWS credentials and endpoint set in the env."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    try:
        wait_http(f"{url}/moto-api/", proc=proc)
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=url,
        )
        yield url
    finally:
        _stop(proc)
        restore_env(saved)


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def s3_bucket(moto_endpoint) -> str:
    """A fresh, empty bucket on the moto server: ``s3://<name>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> dict:
    """A real Ray head (``ray start --head --block``) on 127.0.0.1 with the dashboard for job submission.

    Yields ``{"address": "127.0.0.1:PORT", "dashboard": "http://127.0.0.1:PORT", "temp_dir": its logs,
    "pid": the ray start process, parent of the Ray's processes}``.
    """
    port, dash = free_port(), free_port()
    # Every listener on its own free port: another Ray on the machine (a developer's `dvc repro`, a
    # local ray.init) holds the defaults, and a head whose agent cannot bind accepts no jobs.
    ports = {
        flag: free_port()
        for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        )
    }  # fmt: skip
    temp_dir = Path("/tmp") / f"ray_{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        *(f"--{flag}={p}" for flag, p in ports.items()),
    ]  # fmt: skip
    # Ray 2.60 turns token authentication on by default; this head listens on 127.0.0.1 only, so the
    # tests run it (and its clients: ray job submit, ray.init) with authentication off. A single-machine
    # Ray, it runs as the stages' own local Ray does (components/training/launch.py): with Ray's switch
    # for that (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), without which Ray swaps 127.0.0.1 for the machine's
    # address and listens on every interface. Its clients (the stages the tests start with
    # RAY_ADDRESS=127.0.0.1:PORT) need the switch too, or they rewrite that address the same way; this
    # process (a test's own ray.init on it) read it when it imported ray, so it gets it on that copy.
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", LOOPBACK_ONLY_ENV)}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update({"RAY_AUTH_MODE": "disabled", LOOPBACK_ONLY_ENV: "0"})
    ray_constants.ENABLE_RAY_CLUSTER = False
    proc = _start(cmd, log, env=RAY_NODE_ENV)
    info = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": str(temp_dir),
            "pid": proc.pid}  # fmt: skip
    try:
        wait_http(f"{info['dashboard']}/api/version", timeout=300, proc=proc)
        yield info
    finally:
        _stop(proc, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
        restore_env(saved)
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (sqlite backend, local artifact store) on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    with serve_mlflow(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), root / "mlflow.log") as url:
        yield url


@contextlib.contextmanager
def serve_mlflow(backend: str, artifacts: str, log: Path, *extra: str, env: dict | None = None, timeout=180):
    """``mlflow server`` (one worker, no job execution) on a free 127.0.0.1 port; yields its URL, stops it."""
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts,
        *extra, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = _start(cmd, log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=timeout, proc=proc)
        yield url
    finally:
        _stop(proc)
