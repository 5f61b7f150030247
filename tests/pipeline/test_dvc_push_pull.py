"""The local dataset as a DVC output: ``dvc push`` to a local remote, ``dvc pull`` into a fresh clone."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import yaml

from tests.train.test_dvc_train import BIN, sh, tiny_project

pytestmark = pytest.mark.slow
DATASET = "data/store/datasets/default"


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_push_and_pull_round_trip_the_local_dataset(tmp_path):
    clone, fresh, remote = tmp_path / "clone", tmp_path / "fresh", tmp_path / "remote"
    env = tiny_project(clone)
    dvc = str(BIN / "dvc")
    sh(["git", "init", "-q"], clone, env)
    sh([dvc, "repro", "prepare"], clone, env, timeout=400)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert DATASET in {o["path"] for o in lock["stages"]["prepare"]["outs"]}  # cached, not only on disk
    sh([dvc, "remote", "add", "-d", "local", str(remote)], clone, env)
    sh([dvc, "push", "prepare"], clone, env)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "prepare, pushed"], clone, env)
    assert "datasets" not in sh(["git", "ls-files"], clone, env).stdout  # the shards are in DVC, not git

    subprocess.run(["git", "clone", "-q", str(clone), str(fresh)], check=True, env=env)
    assert not (fresh / DATASET).exists()
    sh([dvc, "pull", "prepare"], fresh, env)  # the lock copied from the project also names other stages
    pulled = files_of(fresh / DATASET)
    assert pulled == files_of(clone / DATASET) and any(name.endswith(".parquet") for name in pulled)
    manifest = json.loads((fresh / "data/prepared/manifest.json").read_text())
    for infos in manifest["shards"].values():  # what the manifest promises is what arrived
        for info in infos:
            assert hashlib.sha256((fresh / info["uri"]).read_bytes()).hexdigest() == info["sha256"]
    status = sh([dvc, "status", "prepare"], fresh, env).stdout
    assert "up to date" in status, status
