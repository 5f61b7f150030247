"""The dataset handle: one atomic unit, published by its manifest; readers see one dataset or an error.

The faults are real: a second ``prepare`` is killed with SIGKILL while it writes shards, shards are
truncated and overwritten on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.config import load_params
from components.data.dataset import DatasetError, open_dataset
from components.errors import UserError
from components.evaluation.scoring import shard_samples
from components.storage import Store
from components.training import launch
from tests.prepare.conftest import REPO, SMALL, run_prepare

FAST = [*SMALL, "prepare.rows_per_shard=2", "prepare.rows_per_row_group=2"]


def _prepare_args(out: Path, *overrides: str) -> list[str]:
    args = [sys.executable, "-m", "pipeline.prepare", "--params", str(REPO / "params.yaml"), "--no-progress"]
    for s in (
        f"storage.root={out / 'store'}", f"prepare.card={out / 'card2.json'}",
        f"prepare.manifest={out / 'manifest2.json'}", f"prepare.samples_png={out / 's2.png'}", *overrides,
    ):  # fmt: skip
        args += ["-S", s]
    return args


def _staged_shards(folder: Path, published: str) -> list[Path]:
    return [p for d in folder.glob("v-*") if d.name != published for p in d.glob("*.parquet")]


def _all_rows(ds) -> list[dict]:
    return [r for split in ("train", "val", "test") for r in ds.iter_rows(split, ["sample_id", "split"])]


def test_prepare_killed_midway_leaves_the_published_dataset_whole(tmp_path):
    first = run_prepare(tmp_path, *FAST)
    folder = tmp_path / "store" / "datasets" / "default"
    root = str(tmp_path / "store")
    # a second prepare with another seed (and more data), killed once its first new shard is on disk
    proc = subprocess.Popen(
        _prepare_args(tmp_path, *FAST, "prepare.seed=1", "prepare.crops_per_photo=6"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not _staged_shards(folder, first["version"]):
            assert proc.poll() is None, "the second prepare ended before writing a shard"
            time.sleep(0.005)  # polling for a file, not waiting for a time
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _staged_shards(folder, first["version"]), "the killed run left its unpublished shards"

    ds = open_dataset(Store(root), "default")  # what train, evaluate and ablate open
    assert ds.version == first["version"] and ds.content_hash == first["content_hash"]
    rows = _all_rows(ds)
    assert len(rows) == len({r["sample_id"] for r in rows}) == sum(first["counts"].values())
    train, val = launch.find_shards(ds)
    assert len(train) == len(first["shards"]["train"]) and len(val) == len(first["shards"]["val"])
    assert len(shard_samples(Store(root), "default")) == first["counts"]["test"]

    # the next successful prepare publishes the new dataset and removes the leftovers
    second = run_prepare(tmp_path, *FAST, "prepare.seed=1")
    assert second["content_hash"] != first["content_hash"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", second["version"]]
    rows = _all_rows(open_dataset(Store(root), "default"))
    assert len(rows) == len({r["sample_id"] for r in rows}) == sum(second["counts"].values())


def test_shard_that_differs_from_the_manifest_is_an_error_naming_it(tmp_path):
    manifest = run_prepare(tmp_path, *SMALL)
    root = str(tmp_path / "store")
    shard = Path(manifest["shards"]["val"][0]["uri"])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DatasetError, match=rf"{shard}: shard is {len(data) // 2} bytes, the manifest says"):
        open_dataset(Store(root), "default")
    p = load_params(REPO / "params.yaml", [f"storage.root={root}"])
    with pytest.raises(UserError, match=str(shard)):
        launch.check_inputs(p)
    shard.write_bytes(data[:100] + bytes(200) + data[300:])  # same size, other bytes
    with pytest.raises(DatasetError, match=rf"{shard}: shard content does not match the manifest's sha256"):
        open_dataset(Store(root), "default")
    shard.unlink()
    with pytest.raises(DatasetError, match=rf"{shard}: shard listed in the manifest is missing"):
        open_dataset(Store(root), "default")


def test_no_or_foreign_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"datasets/none: no published dataset .*pipeline\.prepare"):
        open_dataset(Store(str(tmp_path)), "none")
    folder = tmp_path / "datasets" / "old"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "harmonize-manifest/1"}))
    with pytest.raises(DatasetError, match="not a harmonize-manifest/2 manifest"):
        open_dataset(Store(str(tmp_path)), "old")
