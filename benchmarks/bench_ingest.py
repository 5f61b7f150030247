"""Training ingest: the shard reader (``train.reader: shards``) vs Ray Data (``ray_data``), side by side.

    .venv/bin/python benchmarks/bench_ingest.py --root data/store     # writes benchmarks/ingest.json

On the builtin default dataset (opened through its manifest; run ``python -m pipeline.prepare`` first),
at the default ``train`` settings: each reader's throughput alone (images/s decoded, flipped, colour-
jittered and identity-paired, in batches of ``train.batch_size``), the throughput of one training step
(forward + backward at the default model, on a batch already in memory), and their ratio. The issue's
bar: a reader at least 10x ahead of training. ``--rounds`` rounds, each a block of training steps, one
epoch of each reader, interleaved so all see the same load of the shared machine; medians reported
(after one warm-up step and one warm-up Ray Data epoch, which starts its read tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import load_params  # noqa: E402
from components.data.dataset import open_dataset  # noqa: E402
from components.data.shards import ShardDataset  # noqa: E402
from components.storage import Store  # noqa: E402
from components.training import engine, ingest  # noqa: E402
from components.training.augment import identity_pairs, scene_colour_jitter  # noqa: E402


def shard_epoch(uris: list[str], t, epoch: int):
    ds = ShardDataset(uris, hflip=t.hflip, seed=t.seed)
    ds.set_epoch(epoch)
    return torch.utils.data.DataLoader(ds, batch_size=t.batch_size, drop_last=True, num_workers=0)


def time_epoch(batches, t) -> float:
    """Images/s of one epoch of ``batches``, augmented as ``engine.train_step`` does."""
    n, t0 = 0, time.perf_counter()
    for batch in batches:
        comp, real = scene_colour_jitter(batch["composite"], batch["real"], t.colour_jitter)
        identity_pairs(comp, real, t.identity_fraction)
        n += len(batch["composite"])
    return n / (time.perf_counter() - t0)


def time_training(state, batch, t, steps: int) -> float:
    """Images/s of ``engine.train_step`` (default model and loss) on one in-memory batch."""
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.train_step(state, batch, t, "cpu", t.amp)
    return steps * t.batch_size / (time.perf_counter() - t0)


def summary(values: list[float]) -> dict:
    return {"images_per_s": round(statistics.median(values), 1), "per_round": [round(v, 1) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="storage root with datasets/default (default: params')")
    ap.add_argument("--rounds", type=int, default=5, help="epochs per reader (and training blocks)")
    ap.add_argument("--train-steps", type=int, default=20, help="training steps per round")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "ingest.json"))
    args = ap.parse_args()

    import ray

    params = load_params(REPO / "params.yaml", [f"storage.root={args.root}"] if args.root else [])
    t = params.train
    torch.set_num_threads(t.cpus_per_worker)
    data = open_dataset(Store.from_config(params.storage), params.prepare.name)
    uris = [str(Path(u).absolute()) for u in data.uris("train")]
    batch = next(iter(shard_epoch(uris, t, 0)))
    state = engine.build_state(params, engine.generator_spec(params.model.generator, data.image_size))
    engine.train_step(state, batch, t, "cpu", t.amp)  # warm-up
    ray.init(num_cpus=t.cpus_per_worker + 1, include_dashboard=False, logging_level="WARNING")
    runs: dict[str, list[float]] = {"training_step": [], "shards": [], "ray_data": []}
    try:  # the dataset as train hands it to the TorchTrainer; one consumer like one worker's shard
        ds = ingest.train_dataset(uris, None, t.seed)
        time_epoch(ingest.epoch_batches(ds, t.batch_size, t.hflip, t.seed, 0, 0), t)  # starts Ray Data
        for epoch in range(1, args.rounds + 1):  # interleaved: all three see the same machine load
            runs["training_step"].append(time_training(state, batch, t, args.train_steps))
            runs["shards"].append(time_epoch(shard_epoch(uris, t, epoch), t))
            ray_batches = ingest.epoch_batches(ds, t.batch_size, t.hflip, t.seed, 0, epoch)
            runs["ray_data"].append(time_epoch(ray_batches, t))
            print({k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    finally:
        ray.shutdown()
    train = {"steps_per_round": args.train_steps, **summary(runs["training_step"])}
    readers = {k: summary(runs[k]) for k in ("shards", "ray_data")}
    for r in readers.values():
        r["reader_over_training"] = round(r["images_per_s"] / train["images_per_s"], 1)
    fastest = max(readers, key=lambda k: readers[k]["images_per_s"])

    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "ray": ray.__version__, "threads": t.cpus_per_worker},  # fmt: skip
        "dataset": {"name": params.prepare.name, "version": data.version, "train_rows": data.rows("train"),
                    "epoch_images": data.rows("train") // t.batch_size * t.batch_size,
                    "image_size": data.image_size},  # fmt: skip
        "settings": {"batch_size": t.batch_size, "hflip": t.hflip, "colour_jitter": t.colour_jitter,
                     "identity_fraction": t.identity_fraction, "model": params.model.generator},  # fmt: skip
        "training_step": train,
        "readers": readers,
        "fastest_reader": fastest,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
