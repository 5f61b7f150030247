"""The shard readers: torch IterableDataset (ranks, workers, epochs) and Ray Data."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import torch
from torch.utils.data import DataLoader

from components.data.dataset import shard_uris
from components.data.shards import ShardDataset, ray_dataset
from components.storage import Store

from .conftest import REPO, read_rows


def _uris(builtin_run):
    out, _ = builtin_run
    return shard_uris(Store(str(out / "store")), "default", "train")


def test_ranks_get_disjoint_equal_parts_every_epoch(builtin_run):
    uris = _uris(builtin_run)
    all_ids = {r["sample_id"] for r in read_rows(builtin_run[1]) if r["split"] == "train"}
    seen = []
    for epoch in (0, 1):
        parts = []
        for rank in (0, 1):
            ds = ShardDataset(uris, rank=rank, world_size=2, seed=3)
            ds.set_epoch(epoch)
            parts.append([x["sample_id"] for x in ds])
        assert len(parts[0]) == len(parts[1]) == len(all_ids) // 2
        assert not set(parts[0]) & set(parts[1])
        assert set(parts[0]) | set(parts[1]) <= all_ids
        seen.append(parts[0])
    assert seen[0] != seen[1]  # reshuffled per epoch


def test_dataloader_batches_in_network_ranges(builtin_run):
    uris = _uris(builtin_run)
    ds = ShardDataset(uris, hflip=True)
    ids = []
    for batch in DataLoader(ds, batch_size=8, num_workers=2):
        assert batch["composite"].shape[1:] == (3, 32, 32) and batch["mask"].shape[1:] == (1, 32, 32)
        assert batch["composite"].dtype == torch.float32
        assert batch["composite"].min() >= -1 and batch["composite"].max() <= 1
        assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
        m = batch["mask"].bool().expand_as(batch["real"])
        assert torch.equal(batch["composite"][~m], batch["real"][~m])  # flips keep the triplet aligned
        ids += batch["sample_id"]
    assert sorted(ids) == sorted({r["sample_id"] for r in read_rows(builtin_run[1]) if r["split"] == "train"})


def test_ray_data_reads_the_shards(builtin_run):
    import ray

    uris = _uris(builtin_run)
    temp = f"/tmp/ray_{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    # A private local Ray instance (no dashboard): lighter than the shared head on a busy machine.
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        _temp_dir=temp,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        batches = list(ray_dataset(uris, batch_size=16).iter_batches(batch_size=16, batch_format="numpy"))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    comp = np.concatenate([b["composite"] for b in batches])
    ids = [s for b in batches for s in b["sample_id"]]
    expected = {r["sample_id"] for r in read_rows(builtin_run[1]) if r["split"] == "train"}
    assert comp.shape[1:] == (3, 32, 32) and comp.dtype == np.float32
    assert sorted(ids) == sorted(expected)
