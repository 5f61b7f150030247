"""Training throughput: the default profile on 1 vs 2 Ray workers, and RainNet 256x256 ngf 64 batch 4 per
step through Ray Train vs the plain eager PyTorch loop (the same ``engine.train_step``), side by side.

    .venv/bin/python benchmarks/bench_train.py            # writes benchmarks/train.json

Images/s are measured after a warm-up step and include data loading (default profile) or not (256x256:
synthetic tensors, so only the model and the Ray Train wrapping differ). Peak memory is the largest
resident set of any process of the measured setup (the driver or a Ray worker), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class PeakRSS:
    """Largest RSS (MiB) of one process among ``pid`` and its descendants while the block runs."""

    def __init__(self, pid: int | None = None):
        self.pid, self.peak, self._stop = pid or os.getpid(), 0.0, threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        self.peak = max(self.peak, p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def __enter__(self):
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# --------------------------------------------------------------------------------------------------
# 1. The default profile through pipeline.train, 1 worker x 2 CPUs vs 2 workers x 1 CPU
# --------------------------------------------------------------------------------------------------


def default_profile(work: Path, epochs: int, steps: int | None) -> list[dict]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    }
    base = ["-S", f"storage.root={work / 'store'}"]
    for key in ("card", "manifest", "samples_png"):
        base += ["-S", f"prepare.{key}={work / key}"]
    if not (work / "store" / "datasets").exists():
        subprocess.run(
            [sys.executable, "-m", "pipeline.prepare", "--no-progress", *base], cwd=REPO, env=env, check=True
        )
    rows = []
    for workers, cpus in ((1, 2), (2, 1)):
        out = work / f"w{workers}"
        args = [*base, "-S", f"train.epochs={epochs}", "-S", "train.decay_epochs=0",
                "-S", f"train.num_workers={workers}", "-S", f"train.cpus_per_worker={cpus}",
                "-S", f"train.run_name=bench-w{workers}", "-S", f"train.weights_out={out / 'g.pt'}",
                "-S", f"train.metrics_out={out / 'train.json'}", "-S", f"train.plots_out={out / 'epochs.csv'}"]  # fmt: skip
        if steps:
            args += ["-S", f"train.max_steps_per_epoch={steps}"]
        shutil.rmtree(work / "store" / "ray", ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        with PeakRSS(proc.pid) as mem:
            code = proc.wait()
        if code:
            raise RuntimeError(f"pipeline.train with {workers} workers exited {code}")
        with open(out / "epochs.csv") as f:
            epochs_rows = list(csv.DictReader(f))
        steady = [float(r["images_per_s"]) for r in epochs_rows[1:]] or [
            float(epochs_rows[0]["images_per_s"])
        ]
        rows.append({
            "workers": workers, "cpus_per_worker": cpus,
            "images_per_s": round(sum(steady) / len(steady), 2),
            "epoch_time_s": round(sum(float(r["epoch_time_s"]) for r in epochs_rows[1:] or epochs_rows)
                                  / max(1, len(epochs_rows[1:] or epochs_rows)), 2),
            "wall_s_including_ray_startup": round(time.perf_counter() - t0, 1),
            "peak_rss_mib_any_process": round(mem.peak, 1),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# 2. RainNet 256x256 ngf 64 batch 4: eager loop vs Ray Train, same engine.train_step
# --------------------------------------------------------------------------------------------------


def big_params(gan: bool):
    from components.config import load_params

    return load_params(REPO / "params.yaml", [
        "model.generator={name: rainnet, placement: rain-decoder, ngf: 64, image_size: 256}",
        "train.batch_size=4", f"train.gan={str(gan).lower()}", "model.discriminator.ndf=64",
        "model.domain_discriminator.ndf=64",
    ])  # fmt: skip


def synthetic_batch(batch: int = 4, size: int = 256) -> dict:
    g = torch.Generator().manual_seed(0)
    comp = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return {"composite": comp, "mask": mask, "real": (comp * 0.8).clamp(-1, 1)}


def timed_steps(state, params, steps: int, device="cpu") -> float:
    from components.training import engine

    batch = synthetic_batch()
    engine.train_step(state, batch, params.train, device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.train_step(state, batch, params.train, device)
    return steps * 4 / (time.perf_counter() - t0)


def eager(steps: int, gan: bool, threads: int) -> dict:
    from components.training import engine

    torch.set_num_threads(threads)
    params = big_params(gan)
    with PeakRSS() as mem:
        state = engine.build_state(params, dict(params.model.generator))
        ips = timed_steps(state, params, steps)
    return {"images_per_s": round(ips, 3), "peak_rss_mib": round(mem.peak, 1)}


def ray_train(steps: int, gan: bool, threads: int) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        import ray.train
        import ray.train.torch

        from components.training import engine

        torch.set_num_threads(config["threads"])
        params = big_params(config["gan"])
        with PeakRSS() as mem:
            state = engine.build_state(
                params, dict(params.model.generator), ray.train.torch.get_device(),
                wrap=ray.train.torch.prepare_model,
            )  # fmt: skip
            ips = timed_steps(state, params, config["steps"])
        # Train V2 attaches metrics to checkpoints only; the worker is on this machine, so a file will do.
        Path(config["out"]).write_text(json.dumps({"images_per_s": ips, "peak_rss_mib": mem.peak}))
        ray.train.report({"images_per_s": ips})

    ray.init(num_cpus=threads, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "result.json")
            TorchTrainer(
                loop,
                train_loop_config={"steps": steps, "gan": gan, "threads": threads, "out": str(out)},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                run_config=RunConfig(name="bench", storage_path=tmp),
            ).fit()
            metrics = json.loads(out.read_text())
    finally:
        ray.shutdown()
    return {
        "images_per_s": round(metrics["images_per_s"], 3),
        "peak_rss_mib": round(metrics["peak_rss_mib"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="default-profile epochs per worker setup")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="cap default-profile steps per epoch")
    ap.add_argument("--big-steps", type=int, default=3, help="timed 256x256 steps per mode")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "train.json"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    threads = min(2, os.cpu_count() or 1)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))

    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },  # fmt: skip
        "default_profile": default_profile(work, args.epochs, args.steps_per_epoch),
    }
    big = {"model": "rainnet rain-decoder ngf 64, 256x256, batch 4, L1 only", "threads": threads,
           "timed_steps": args.big_steps}  # fmt: skip
    # Interleaved so that both see the same machine load.
    big["eager"] = eager(args.big_steps, False, threads)
    print("eager", big["eager"], flush=True)
    big["ray_train"] = ray_train(args.big_steps, False, threads)
    print("ray_train", big["ray_train"], flush=True)
    big["ray_over_eager_throughput"] = round(
        big["ray_train"]["images_per_s"] / big["eager"]["images_per_s"], 3
    )
    result["rainnet_256"] = big
    d = result["default_profile"]
    result["two_over_one_worker_throughput"] = round(d[1]["images_per_s"] / d[0]["images_per_s"], 3)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
