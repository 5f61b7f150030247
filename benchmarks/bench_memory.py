"""Benchmark memory under load: peak RSS of ``evaluate`` and batch ``harmonize`` at 500 and 5,000 images.

    python benchmarks/bench_memory.py                       # writes benchmarks/memory.json
    python benchmarks/bench_memory.py --counts 50 200 --out /tmp/m.json     # a quick look

The test images are made from the builtin photos (crops of ``--size`` pixels, the object recoloured),
written as a published test split (``DatasetWriter``, what ``prepare`` writes) for ``evaluate`` and as a
folder of ``<name>.png`` + ``<name>_mask.png`` pairs for ``harmonize``. Each stage runs as a user runs it
(``python -m pipeline.evaluate`` / ``python -m pipeline.harmonize``) in a child process, with the default
profile's generator (random weights: the cost does not depend on them); its peak RSS is the stage's own
(``os.wait4`` ``ru_maxrss``, forked by a small wrapper: see ``WRAPPER``); the stages run at the same
time, so ``seconds`` is wall time on a shared machine, not a speed figure. Streaming is the point:
the peak at 5,000 images should be about the one at 500.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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
    from components.storage import Store

    writer = DatasetWriter(Store(str(work / "store")), f"bench{n}", rows_per_shard=4096, rows_per_row_group=64)
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


# Linux starts a child's ru_maxrss at the RSS of the process that forked it (the memory map is copied),
# so this large process does not fork the stages itself: a fresh, small Python does and reports the
# stage's own peak (os.wait4) into a JSON file.
WRAPPER = """import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss,
               "seconds": time.perf_counter() - t0}, f)
"""


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    wrapped = [sys.executable, "-c", WRAPPER, str(log.with_suffix(".json")), *cmd]
    with log.open("wb") as f:  # a file, not a pipe: a full pipe would stall the stage
        return subprocess.Popen(wrapped, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f)


def finish(proc: subprocess.Popen, log: Path) -> dict:
    """Wait for one stage; its wall time and its own peak RSS (not this process's, not a sibling's)."""
    proc.wait()
    rec = json.loads(log.with_suffix(".json").read_text())
    if rec["returncode"] != 0:
        raise SystemExit(f"{' '.join(proc.args[3:])} failed ({rec['returncode']}):\n{log.read_text()[-3000:]}")
    return {"peak_rss_mb": round(rec["maxrss_kb"] / 1024, 1), "seconds": round(rec["seconds"], 1)}


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
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        running = []
        for n in args.counts:
            build_inputs(work, n, args.size)
        for n in args.counts:  # all stages at once (each one's peak is its own): the run takes less time
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
                log = work / f"{stage}{n}.log"
                own = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / f'mlruns-{stage}{n}.db'}"}  # no shared db
                running.append((stage, n, log, start(cmd, own, log)))
        for stage, n, log, proc in running:
            results.append({"stage": stage, "images": n, "image_side": args.size, **finish(proc, log)})
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
