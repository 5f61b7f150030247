"""Benchmark memory under load: peak RSS of ``evaluate`` and batch ``harmonize`` at 500 and 5,000 images.

    python benchmarks/bench_memory.py                       # writes benchmarks/memory.json
    python benchmarks/bench_memory.py --counts 50 200 --out /tmp/m.json     # a quick look

The test images are made from the builtin photos (crops of ``--size`` pixels, the object recoloured),
written as a published test split (``DatasetWriter``, what ``prepare`` writes) for ``evaluate`` and as a
folder of ``<name>.png`` + ``<name>_mask.png`` pairs for ``harmonize``. Each stage runs as a user runs it
(``python -m pipeline.evaluate`` / ``python -m pipeline.harmonize``) in a child process, with the default
profile's generator (random weights: the cost does not depend on them); its peak RSS is the child's own
(``os.wait4`` rusage ``ru_maxrss``). Streaming is the point: the peak at 5,000 images should be about
the one at 500.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_triplets(n: int, size: int):
    """``n`` (name, composite, mask, real) of ``size`` pixels: builtin photo crops, object recoloured."""
    from components.data.images import resize_image
    from components.data.sources import builtin_photo

    names = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
    photos = [builtin_photo(p) for p in names]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % len(photos)]
        s = int(rng.integers(min(img.shape[:2]) // 4, min(img.shape[:2]) // 2))
        y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
        real = resize_image(img[y : y + s, x : x + s], size)
        mask = np.zeros((size, size), np.uint8)
        h, w = rng.integers(size // 4, size // 2, 2)
        top, left = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[top : top + h, left : left + w] = 255
        comp = real.astype(np.float32)
        comp[mask > 0] = comp[mask > 0] * rng.uniform(0.6, 1.4, 3) + rng.uniform(-30, 30, 3)
        yield f"img{i:05d}", np.clip(np.rint(comp), 0, 255).astype(np.uint8), mask, real


def build_inputs(work: Path, n: int, size: int) -> None:
    from components.data.dataset import DatasetWriter
    from components.data.images import encode_png

    writer = DatasetWriter(str(work / "store"), f"bench{n}", rows_per_shard=4096, rows_per_row_group=64)
    folder = work / f"pairs{n}"
    folder.mkdir(parents=True)
    for name, comp, mask, real in make_triplets(n, size):
        c, m, r = encode_png(comp), encode_png(mask), encode_png(real)
        writer.add({
            "sample_id": name, "scene_id": name, "subset": "bench", "split": "test", "source": "builtin",
            "method": "gain_shift", "composite": c, "mask": m, "real": r, "height": size, "width": size,
            "fg_ratio": float((mask > 0).mean()), "fg_mse": 0.0, "strength": None,
        })  # fmt: skip
        (folder / f"{name}.png").write_bytes(c)
        (folder / f"{name}_mask.png").write_bytes(m)
    writer.publish(image_size=size)


def write_generator(path: Path, size: int) -> None:
    import torch

    from components.checkpoint import save_generator
    from components.config import load_params
    from components.models.init import init_weights
    from components.models.registry import build_model
    from components.training.engine import generator_spec

    torch.manual_seed(0)
    params = load_params(REPO / "params.yaml")
    spec = generator_spec(params.model.generator, size)
    model = build_model(spec)
    init_weights(model, gain=0.02)
    save_generator(str(path), model, spec, size, {"run_id": "bench"})


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time and its own peak RSS (not the parent's, not a sibling's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--size", type=int, default=32, help="test image side (and the network's) in pixels")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "memory.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        gen = work / "generator.pt"
        write_generator(gen, args.size)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}", "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        for n in args.counts:
            build_inputs(work, n, args.size)
            out = work / f"out{n}"
            evaluate = [sys.executable, "-m", "pipeline.evaluate", "-S", f"evaluate.model={gen}",
                        "-S", f"storage.root={work / 'store'}", "-S", f"prepare.name=bench{n}",
                        "-S", f"evaluate.per_image_out={out / 'per_image.csv'}",
                        "-S", f"evaluate.summary_out={out / 'eval.json'}",
                        "-S", f"evaluate.summary_md={out / 'eval.md'}",
                        "-S", f"evaluate.showcase_out={out / 'showcase.png'}",
                        "-S", "evaluate.device=cpu"]  # fmt: skip
            harmonize = [sys.executable, "-m", "pipeline.harmonize", str(work / f"pairs{n}"),
                         "-o", str(out / "harmonized"), "-m", str(gen), "-S", "harmonize.device=cpu"]  # fmt: skip
            for stage, cmd in (("evaluate", evaluate), ("harmonize", harmonize)):
                r = measure(cmd, env)
                results.append({"stage": stage, "images": n, "image_side": args.size, **r})
                print(json.dumps(results[-1]), flush=True)
                write_record(args, results)


def write_record(args, results: list[dict]) -> None:
    """The JSON so far (rewritten after every measurement: a long run keeps what it measured)."""
    by = {(r["stage"], r["images"]): r["peak_rss_mb"] for r in results}
    lo, hi = min(args.counts), max(args.counts)
    record = {
        "command": "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work)",
        "results": results,
        "threads": "OMP_NUM_THREADS=1 in the stages",
        "peak_ratio": {
            s: round(by[(s, hi)] / by[(s, lo)], 3) for s in ("evaluate", "harmonize") if (s, hi) in by and (s, lo) in by
        },
        "note": f"peak RSS of the stage's own process at {hi} images over that at {lo}: ~1.0 means memory "
        "does not grow with the number of images (the per-image metric rows, a few hundred bytes each, are "
        "all that grows)",
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
