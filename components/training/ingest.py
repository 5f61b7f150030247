"""Ray-native training ingest (``train.reader: ray_data``): Ray Data reads and decodes, the worker batches.

The driver builds one Ray Data dataset from the manifest's train shards (``ray.data.read_parquet`` with
the store's pyarrow filesystem: S3 with its endpoint when ``storage.root`` is ``s3://``), decoded
by the same ``decode_triplet`` as :class:`~components.data.shards.ShardDataset`, and hands it to the
TorchTrainer as ``datasets={"train": ds}``. Ray Train splits it into equal parts per worker, so every
rank sees ``rows // world_size`` rows an epoch, as with the shard reader. Each epoch the files are read
in a new seeded order (``FileShuffleConfig``: re-seeded per execution) and the rows shuffled again in the
worker with a seed of ``(train.seed, rank, epoch)``; the flips are drawn from that seed too and applied
by the shard reader's ``hflip_triplet``. Colour jitter and identity pairs run in ``engine.train_step``
for both readers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from components.data import shards
from components.storage import Store
from components.training import quiet

READERS = ("shards", "ray_data")  # train.reader: ShardDataset in the worker | Ray Data
SHUFFLE_ROWS = 256  # rows in each worker's local shuffle buffer (decoded: ~100 kB each at 64x64)


def train_dataset(uris: list[str], store: Store, seed: int, image_size: int | None = None):
    """The Ray Data dataset of decoded training triplets, files in a new seeded order every epoch; every
    row must be ``image_size`` square when given (checked before its PNGs are decompressed)."""
    from ray.data import FileShuffleConfig

    ds = shards.ray_dataset(uris, store, image_size=image_size, shuffle=FileShuffleConfig(seed=seed))
    return quiet.ray_dataset(ds)


def check_cpus(t) -> None:
    """Right after connecting to Ray, with ``train.reader=ray_data``: Ray Train leaves Ray Data only the
    cluster's CPUs beyond the training workers' (its budget is the total minus training); with none left,
    the read and decode tasks never start and every worker waits for its first batch forever (a 2-CPU
    head with two 1-CPU workers hung). A ``UserError`` naming the ways out instead, before the MLflow run
    exists. A local Ray started by ``train`` has the extra CPU (``launch.train_cpus``)."""
    if t.reader != "ray_data":
        return
    import ray

    from components.errors import UserError

    have, workers = float(ray.cluster_resources().get("CPU", 0)), t.num_workers * t.cpus_per_worker
    if have < workers + 1:
        raise UserError(
            f"train.reader=ray_data needs a CPU for Ray Data beside the {workers:g} of the training workers "
            f"({t.num_workers} x train.cpus_per_worker={t.cpus_per_worker:g}), but the Ray cluster has "
            f"{have:g}; use train.reader=shards (read inside the workers), fewer train.num_workers, or "
            "add CPUs"
        )


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def epoch_batches(
    shard, batch_size: int, hflip: bool, seed: int, rank: int, epoch: int
) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's batches of one epoch from its ``ray.train.get_dataset_shard("train")`` (full batches
    only, like the shard reader's ``drop_last``): ``{"composite", "mask", "real"}`` tensors."""
    s = epoch_seed(seed, rank, epoch)
    rng = np.random.default_rng(s)
    for batch in shard.iter_batches(
        batch_size=batch_size,
        drop_last=True,
        batch_format="numpy",
        local_shuffle_buffer_size=max(SHUFFLE_ROWS, batch_size),
        local_shuffle_seed=s,
    ):
        # a copy: Ray's arrays may be read-only views of its object store
        triplet = tuple(torch.from_numpy(np.array(batch[k])) for k in ("composite", "mask", "real"))
        flip = torch.from_numpy(rng.random(len(triplet[0])) < 0.5)[:, None, None, None]
        if hflip:
            flipped = shards.hflip_triplet(*triplet, True)
            triplet = tuple(torch.where(flip, a, b) for a, b in zip(flipped, triplet, strict=True))
        yield dict(zip(("composite", "mask", "real"), triplet, strict=True))
