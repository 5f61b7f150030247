"""Is the GPU busy? The paper profile's training step, and four small ablation trials packed on one GPU.

    .venv/bin/python benchmarks/bench_gpu.py                       # on a GPU machine -> benchmarks/gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --smoke  # the same code on CPU, tiny sizes, no file

1. Data: an iHarmony4-layout folder from the builtin photos (components/data/make_iharmony4.py), through
   ``prepare`` twice: 256 px (the paper profile) and 64 px (the ablation's small networks).
2. Paper step: the paper profile as it trains (RainNet ngf 64 at 256, batch 11, GAN losses, bf16
   autocast, channels-last, cudnn.benchmark, pinned memory, ``train.loader_workers`` reader processes:
   ``components/training/cuda.py``), ``--steps`` steps after a warm-up. Recorded: images/s, the share
   of the wall time spent waiting for the next batch (the reader), GPU utilisation and memory sampled
   with ``nvidia-smi`` in a thread, and torch's peak allocated memory.
3. Packed: the lalonde-ablate profile's small network (RainNet ngf 16 at 64, batch 16, L1) alone, then
   four copies at once on the same GPU, each its own process as four Ray trials with
   ``ablate.gpus_per_worker: 0.25`` would be; total images/s of the four against one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def nvidia_smi(query: str) -> list[str] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [v.strip() for v in out.strip().split(",")]


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory used (MiB) every ``period`` s while running."""

    def __init__(self, period: float = 0.25):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            v = nvidia_smi("utilization.gpu,memory.used")
            if v is None:
                return
            self.samples.append((float(v[0]), float(v[1])))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        util = [u for u, _ in self.samples]
        return {
            "util_mean_pct": round(sum(util) / len(util), 1),
            "util_min_pct": min(util),
            "memory_used_max_mib": max(m for _, m in self.samples),
            "samples": len(util),
        }


def params_for(profile: str, root: str, size: int, name: str, overrides: list[str]):
    from components.config import load_params

    return load_params(
        REPO / "params.yaml",
        [f"storage.root={root}", "storage.endpoint_url=null", f"prepare.name={name}", f"prepare.image_size={size}",
         f"train.dataset={name}", *overrides],
        profile=profile,
    )  # fmt: skip


def make_data(work: Path, count: int, sizes: dict[str, int], processes: int) -> None:
    """One iHarmony4-layout folder, prepared at each size (dataset name -> image size)."""
    from components.data.build import prepare_dataset
    from components.data.make_iharmony4 import make_iharmony4
    from components.storage import Store

    ih4 = work / "ih4"
    make_iharmony4(str(ih4), count, size=max(sizes.values()), processes=processes)
    for name, size in sizes.items():
        p = params_for("paper", str(work / "store"), size, name, [
            f"prepare.sources=[{{kind: iharmony4, path: {ih4}}}]", f"prepare.processes={processes}",
            f"prepare.card={work / name}-card.json",
        ])  # fmt: skip
        prepare_dataset(p.prepare, Store(str(work / "store")), progress=False)


def train_steps(p, device: str, steps: int, warmup: int) -> dict:
    """``steps`` training steps of ``p`` after ``warmup``: images/s, the reader's share, peak memory."""
    import torch
    from torch.utils.data import DataLoader

    from components.data.shards import ShardDataset, shard_uris
    from components.storage import Store
    from components.training import cuda, engine

    t, dev = p.train, torch.device(device)
    cuda.tune_backend(dev)
    store = Store.from_config(p.storage)
    uris = shard_uris(store, p.train.dataset, "train")
    state = engine.build_state(p, engine.generator_spec(dict(p.model.generator), p.prepare.image_size), dev)
    ds = ShardDataset(uris, hflip=t.hflip, seed=t.seed, store=store)
    loader = DataLoader(ds, batch_size=t.batch_size, drop_last=True, **cuda.loader_options(t, dev))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    epoch, it = 0, iter(loader)
    wait = busy = 0.0
    images = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            ds.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        engine.train_step(state, batch, t, dev, t.amp)
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            wait, busy, images = wait + t1 - t0, busy + t2 - t1, images + batch["composite"].shape[0]
    total = wait + busy
    out = {
        "steps": steps,
        "batch_size": t.batch_size,
        "image_size": p.prepare.image_size,
        "generator": {k: p.model.generator[k] for k in ("name", "ngf", "head") if k in p.model.generator},
        "gan": t.gan,
        "amp_bf16": t.amp and dev.type == "cuda",
        "channels_last": t.channels_last and dev.type == "cuda",
        "loader_workers": t.loader_workers,
        "images_per_s": round(images / total, 2),
        "step_ms": round(1000 * total / steps, 1),
        "reader_share": round(wait / total, 4),
    }
    if dev.type == "cuda":
        out["torch_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    return out


def trial_cmd(a, work: Path) -> list[str]:
    return [sys.executable, __file__, "--role", "trial", "--work", str(work), "--device", a.device,
            "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--smoke"] if a.smoke else [])  # fmt: skip


def small_params(work: Path, smoke: bool):
    extra = ["model.generator.ngf=4"] if smoke else []
    return params_for("lalonde-ablate", str(work / "store"), 64, "bench-64", ["train.use_gpu=true", *extra])


def paper_params(work: Path, size: int, smoke: bool):
    extra = (
        ["model.generator.ngf=8", "model.discriminator.ndf=8", "model.domain_discriminator.ndf=8"]
        if smoke
        else []
    )
    return params_for("paper", str(work / "store"), size, "bench-paper", extra)


def packed(a, work: Path, n: int) -> dict:
    """``n`` small trials at once, each its own process; the total images/s and the GPU while they ran."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with GpuSampler() as gpu:
        procs = [
            subprocess.Popen(trial_cmd(a, work), env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)
        ]
        outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit("a packed trial failed")
    return {
        "trials": n,
        "total_images_per_s": round(sum(o["images_per_s"] for o in outs), 2),
        "per_trial_images_per_s": [o["images_per_s"] for o in outs],
        "reader_share_mean": round(sum(o["reader_share"] for o in outs) / n, 4),
        "gpu": gpu.summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--count", type=int, default=400, help="composites of the generated data")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--smoke", action="store_true", help="tiny networks and data (a CPU check of the script)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None, help="default: benchmarks/gpu.json on CUDA, none on CPU")
    ap.add_argument("--role", default="main", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "trial":
        print(json.dumps(train_steps(small_params(Path(a.work), a.smoke), a.device, a.steps, a.warmup)))
        return
    if a.smoke:
        a.count, a.steps, a.warmup = min(a.count, 40), min(a.steps, 3), min(a.warmup, 1)
    size = 64 if a.smoke else 256
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_gpu-"))
    load = [os.getloadavg()]
    t = time.perf_counter()
    make_data(work, a.count, {"bench-paper": size, "bench-64": 64}, a.processes)
    data_s = time.perf_counter() - t
    with GpuSampler() as gpu:
        paper = train_steps(paper_params(work, size, a.smoke), a.device, a.steps, a.warmup)
    paper["gpu"] = gpu.summary()
    alone, four = packed(a, work, 1), packed(a, work, 4)
    load.append(os.getloadavg())
    card = nvidia_smi("name,memory.total")
    import torch

    out = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "card": f"{card[0]} ({card[1]} MiB)" if card else f"no GPU ({a.device})",
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "load_average_1_5_15": [[round(v, 2) for v in lv] for lv in load],
        "data": {"composites": a.count, "seconds": round(data_s, 1)},
        "paper_step": paper,
        "packed_small_trials": {
            "alone": alone,
            "four": four,
            "four_over_alone": round(four["total_images_per_s"] / alone["total_images_per_s"], 2),
        },
    }
    text = json.dumps(out, indent=2) + "\n"
    dest = a.out or (str(REPO / "benchmarks" / "gpu.json") if a.device.startswith("cuda") else None)
    if dest:
        Path(dest).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
