"""Benchmark of ``prepare``: synthesis throughput (1 vs 2 processes) and the shard reader vs one train step.

    .venv/bin/python benchmarks/bench_prepare.py [--crops 24] [--out benchmarks/prepare.json]

Everything is measured side by side in one run, so ratios are meaningful on a shared machine even
when absolute numbers are not. The reader target: it feeds >= 10x what one training step of the
default profile (RainNet ngf 16, 64x64, batch 8, CPU, L1 + Adam) consumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import load_params  # noqa: E402
from components.data.build import prepare_dataset  # noqa: E402
from components.data.shards import ShardDataset, shard_uris  # noqa: E402
from components.storage import Store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bench_prepare(root: str, crops: int, processes: int) -> dict:
    params = load_params(REPO / "params.yaml", [f"storage.root={root}", f"prepare.crops_per_photo={crops}",
                                                f"prepare.processes={processes}"])  # fmt: skip
    t = time.perf_counter()
    result = prepare_dataset(params.prepare, Store.from_config(params.storage), progress=False)
    wall = time.perf_counter() - t
    return {"processes": processes, "triplets": result.card["total"], "seconds": round(wall, 2),
            "triplets_per_s": round(result.card["total"] / wall, 1)}  # fmt: skip


def bench_reader(root: str, batch_size: int, num_workers: int, epochs: int = 3) -> dict:
    uris = shard_uris(Store(root), "default", "train")
    ds = ShardDataset(uris, hflip=True)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    n, t = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            n += batch["composite"].shape[0]
    wall = time.perf_counter() - t
    return {"num_workers": num_workers, "batch_size": batch_size, "triplets": n, "seconds": round(wall, 2),
            "triplets_per_s": round(n / wall, 1)}  # fmt: skip


def bench_train_step(spec: dict, image_size: int, batch_size: int, steps: int = 12) -> dict:
    from components.models import build_model

    model = build_model({**spec, "image_size": image_size})
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    comp = torch.rand(batch_size, 3, image_size, image_size) * 2 - 1
    real = torch.rand(batch_size, 3, image_size, image_size) * 2 - 1
    mask = (torch.rand(batch_size, 1, image_size, image_size) > 0.7).float()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        out = model(comp, mask)
        loss = (out - real).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    times.sort()
    step = times[len(times) // 2]
    return {"spec": spec, "image_size": image_size, "batch_size": batch_size, "median_step_s": round(step, 4),
            "triplets_per_s_consumed": round(batch_size / step, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--crops", type=int, default=24, help="builtin crops per photo for the throughput run"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "prepare.json"))
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        prep = [bench_prepare(f"{tmp}/p{p}", args.crops, p) for p in (1, 2)]
        root = f"{tmp}/p1"
        spec = dict(params.model.generator)
        # Interleaved rounds (reader, train step, reader, ...) so that both see the same machine load.
        rounds = []
        for _ in range(3):
            rounds.append(
                (
                    [bench_reader(root, params.train.batch_size, w, epochs=1) for w in (0, 1)],
                    bench_train_step(spec, params.prepare.image_size, params.train.batch_size, steps=6),
                )
            )
    ratios = sorted(max(r["triplets_per_s"] for r in rd) / st["triplets_per_s_consumed"] for rd, st in rounds)
    reader = [r for rd, _ in rounds for r in rd]
    step = sorted((st for _, st in rounds), key=lambda st: st["median_step_s"])[1]
    result = {
        "command": "python benchmarks/bench_prepare.py " + shlex.join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "prepare": prep,
        "prepare_speedup_2_vs_1": round(prep[1]["triplets_per_s"] / prep[0]["triplets_per_s"], 2),
        "reader": reader,
        "train_step": step,
        "reader_vs_train_step_per_round": [round(x, 1) for x in ratios],
        "reader_vs_train_step": round(ratios[1], 1),  # median of the interleaved rounds
        "target_reader_vs_train_step": 10.0,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
