"""Two ``prepare`` runs on one dataset, for real: separate processes overlapping on a local root and on S3.

The overlap is made deterministic without any sleep: the first run stops itself with SIGSTOP right before
it publishes (``HARMONIZE_PREPARE_STOP_BEFORE_PUBLISH``, the point where a second run did the damage),
and the test waits for that stop with ``waitpid(WUNTRACED)``; or the test holds the dataset's lock itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3

from components.data.dataset import STOP_ENV, open_dataset
from components.data.lock import LEASE_ENV, DatasetLock
from components.storage import Store
from tests.prepare.conftest import REPO, run_prepare

FEW = [
    "prepare.image_size=32", "prepare.crops_per_photo=2", "prepare.composites_per_photo=1",
    "prepare.sources=[{kind: builtin, limit: 8}]", "prepare.rows_per_shard=4",
]  # fmt: skip


def prepare(out: Path, root: str, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m pipeline.prepare`` in its own process, DVC copies under ``out``."""
    args = [sys.executable, "-m", "pipeline.prepare", "--params", str(REPO / "params.yaml"), "--no-progress"]
    for s in (
        f"storage.root={root}", f"prepare.card={out / 'card.json'}", f"prepare.manifest={out / 'manifest.json'}",
        f"prepare.samples_png={out / 'samples.png'}", *FEW, *overrides,
    ):  # fmt: skip
        args += ["-S", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def stopped_before_publishing(proc: subprocess.Popen) -> None:
    """Block until the run has stopped itself (SIGSTOP) at the publish point."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the first prepare ended instead of stopping: {finish(proc)}"


def published(store: Store) -> dict:
    return json.loads(store.read_bytes(store.uri("datasets", "default", "manifest.json")))


def versions(store: Store) -> list[str]:
    return [d for d in store.list_dirs(store.uri("datasets", "default")) if d.startswith("v-")]


def dvc_copy(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def overlap(tmp_path: Path, root: str, store: Store, env: dict | None = None) -> None:
    """Run A stops before publishing; run B starts and fails at once, touching nothing; A then publishes
    whole; B run again publishes after it. Every published dataset opens and verifies."""
    a = prepare(tmp_path / "a", root, env={STOP_ENV: "1", **(env or {})})
    try:
        stopped_before_publishing(a)
        staged = versions(store)
        assert len(staged) == 1  # A's version, every shard written, not yet published

        code, err = finish(prepare(tmp_path / "b", root, "prepare.seed=1"))
        assert code == 2, err
        assert "another prepare is writing this dataset" in err and f"pid {a.pid}" in err, err
        assert "Traceback" not in err
        assert versions(store) == staged  # B removed nothing of A's
        assert not (tmp_path / "b" / "manifest.json").exists()
    finally:
        os.kill(a.pid, signal.SIGCONT)
    code, err = finish(a)
    assert code == 0, err
    first = published(store)
    assert first["version"] == staged[0] and dvc_copy(tmp_path / "a") == first
    ds = open_dataset(store, "default")  # every shard there, sizes and sha256 as listed
    assert ds.content_hash == first["content_hash"]

    code, err = finish(prepare(tmp_path / "b", root, "prepare.seed=1"))  # after A: B publishes whole
    assert code == 0, err
    second = published(store)
    assert dvc_copy(tmp_path / "b") == second and second["content_hash"] != first["content_hash"]
    assert open_dataset(store, "default").version == second["version"]
    assert versions(store) == [second["version"]]  # A's version went with B's publish, nothing else left


def test_two_prepares_overlapping_on_a_local_root(tmp_path):
    root = str(tmp_path / "store")
    overlap(tmp_path, root, Store(root))


def test_two_prepares_overlapping_on_s3_and_an_expired_lease(moto_endpoint, s3_bucket, tmp_path):
    root = f"{s3_bucket}/store"
    store = Store(root, endpoint_url=moto_endpoint)
    overlap(tmp_path, root, store)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket[5:], Prefix="store/")["Contents"]}
    assert "store/datasets/default.lock" not in keys  # given back by each run that held it

    # A lease nobody renews any more (its run stalled: lease 0 s) is taken over; the stalled run, when it
    # wakes up, finds it lost the dataset and fails without publishing; the newer dataset stays whole.
    c = prepare(tmp_path / "c", root, "prepare.seed=2", env={STOP_ENV: "1", LEASE_ENV: "0"})
    try:
        stopped_before_publishing(c)
        stale = [v for v in versions(store) if v != published(store)["version"]]
        code, err = finish(prepare(tmp_path / "d", root, "prepare.seed=3"))
        assert code == 0, err
    finally:
        os.kill(c.pid, signal.SIGCONT)
    newest = published(store)
    code, err = finish(c)
    assert code == 2 and "taken over" in err and "not published" in err, err
    assert published(store) == newest == dvc_copy(tmp_path / "d")
    assert not (tmp_path / "c" / "manifest.json").exists()
    assert stale[0] not in versions(store) and versions(store) == [newest["version"]]
    assert open_dataset(store, "default").content_hash == newest["content_hash"]


def test_a_lock_held_by_someone_else_stops_prepare_before_any_work(moto_endpoint, s3_bucket, tmp_path):
    for root, store in (
        (str(tmp_path / "store"), Store(str(tmp_path / "store"))),
        (f"{s3_bucket}/store", Store(f"{s3_bucket}/store", endpoint_url=moto_endpoint)),
    ):
        with DatasetLock(store, "default"):  # the test is the other writer
            code, err = finish(prepare(tmp_path / "x", root))
            assert code == 2 and "another prepare is writing this dataset" in err, err
            assert f"pid {os.getpid()}" in err and not store.exists(store.uri("datasets", "default"))
        run_prepare(tmp_path / "x", *FEW, root=root)  # the lock given back: it runs
