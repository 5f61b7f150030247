"""How ``prepare``, the shard reader and ``evaluate`` cost as the data grows towards iHarmony4's size.

    .venv/bin/python -m benchmarks.make_iharmony4 /work/scratch/ih16k --count 16000 --processes 2
    .venv/bin/python benchmarks/bench_scale.py --data /work/scratch/ih16k --sizes 1000 4000 16000 [--out ...]

For each size N, the paper profile's ``prepare`` (iharmony4 source, 256 px, ``limit: N`` composites of
the folder: nested subsets, the same hash order) runs as its own process, then the shard reader (one
epoch of the train split at the paper's batch, 11) and ``evaluate`` on the test split, each as its own
process; a thread samples the resident memory of the process tree (psutil, every 0.1 s). Every step
records its CPU seconds (user + sys of the process tree: ``getrusage(RUSAGE_CHILDREN)`` before and after
the wait, so pool workers count) beside wall seconds and the load average before and after it: on a
shared machine wall time measures the neighbours too, CPU time measures the work. The reader and
``evaluate`` also time their own loop in-process (wall and ``process_time``), without start-up.
Then time ~ N^b is fitted (log-log) on CPU seconds and on wall seconds, a line ``t = c + k N`` too,
and both are extrapolated to iHarmony4's 73,146 composites; the peak memory of the largest size
against the smallest (and the middle one) says whether memory stays flat. ``evaluate`` runs a RainNet
of the paper's architecture at 256 px but ngf ``--eval-ngf`` (16: ngf 64 is too slow on 2 CPU cores;
the scaling with N, not the network's speed, is what is measured here; bench_gpu.py measures ngf 64).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IHARMONY4 = 73146
BATCH = 11  # the paper's
STEPS = ("prepare", "reader", "evaluate")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall and CPU seconds (user + sys of the whole tree, reaped children included), peak
    RSS of its process tree (MB), the 1-min load average before and after, its last stdout line."""
    load_before, cpu0, t = load1(), children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, done = psutil.Process(proc.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_rss(ps))
            done.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall, cpu = time.perf_counter() - t, children_cpu() - cpu0
    done.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "load_1min": [load_before, load1()],
        "last_line": last,
    }


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("-S", p)]


def prepare_cmd(data: str, n: int, work: Path, processes: int) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.prepare", "--profile", "paper", "--no-progress",
        *sets(
            f"storage.root={work / 'store'}",
            f"prepare.sources=[{{kind: iharmony4, path: {data}, limit: {n}}}]",
            f"prepare.processes={processes}",
            f"prepare.card={work / 'card.json'}",
            f"prepare.manifest={work / 'manifest.json'}",
            f"prepare.samples_png={work / 'samples.png'}",
        ),
    ]  # fmt: skip


def reader_main(store_root: str) -> None:
    """One epoch of the train split at batch 11 (the training reader, no workers); prints JSON."""
    from torch.utils.data import DataLoader

    from components.data.dataset import shard_uris
    from components.data.shards import ShardDataset
    from components.storage import Store

    store = Store(store_root)
    ds = ShardDataset(shard_uris(store, "iharmony4-256", "train"), store=store)
    n, t, c = 0, time.perf_counter(), time.process_time()
    for batch in DataLoader(ds, batch_size=BATCH, drop_last=True, num_workers=0):
        n += batch["composite"].shape[0]
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({
        "images": n, "epoch_s": round(wall, 2), "epoch_cpu_s": round(cpu, 2),
        "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1),
    }))  # fmt: skip


def timed_evaluate_main(argv: list[str]) -> None:
    """``python -m pipeline.evaluate argv`` in this process, with its batched scoring loop
    (``components.evaluation.scoring.evaluate``, what images/s is about) timed apart from start-up, model
    load, MLflow logging and the showcase; prints that loop's timing as JSON."""
    from components.cli import run_cli
    from components.evaluation import scoring
    from pipeline import evaluate as stage

    inner, timing = scoring.evaluate, {}

    def timed(*args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        rows = inner(*args, **kwargs)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        timing.update(images=len(rows), loop_s=round(wall, 2), loop_cpu_s=round(cpu, 2))
        return rows

    scoring.evaluate = timed  # the stage calls it through the module
    try:
        run_cli(stage.main, argv)
    except SystemExit as exc:
        if exc.code:
            raise
    print(json.dumps(timing))


def eval_model(work: Path, ngf: int) -> str:
    """The paper profile's generator (RainNet, image head, 256) at ``ngf``, untrained, as a checkpoint."""
    import torch

    from components.checkpoint import save_generator
    from components.config import load_params
    from components.models import build_model

    spec = {**load_params(REPO / "params.yaml", profile="paper").model.generator, "ngf": ngf}
    spec = {k: v for k, v in spec.items() if v is not None}
    torch.manual_seed(0)
    model = build_model({**spec, "image_size": 256})
    path = work / f"rainnet-ngf{ngf}.pt"
    save_generator(str(path), model, spec, 256)
    return str(path)


def evaluate_cmd(work: Path, model: str) -> list[str]:
    return [
        sys.executable, __file__, "--timed-evaluate", "--profile", "paper",
        "--tracking-uri", f"sqlite:///{work / 'mlruns.db'}",
        *sets(
            f"storage.root={work / 'store'}",
            f"prepare.card={work / 'card.json'}",
            f"evaluate.model={model}",
            "evaluate.device=cpu",
            f"evaluate.per_image_out={work / 'eval.csv'}",
            f"evaluate.summary_out={work / 'eval.json'}",
            f"evaluate.summary_md={work / 'eval.md'}",
            f"evaluate.showcase_out={work / 'eval.png'}",
        ),
    ]  # fmt: skip


def fit(ns: list[int], values: list[float]) -> dict:
    """Growth exponent b of v ~ N^b (least squares in log-log), the line v = c + k N, and both at 73,146."""
    x, y = np.log(ns), np.log(values)
    b, loga = np.polyfit(x, y, 1)
    k, c = np.polyfit(ns, values, 1)
    return {
        "exponent": round(float(b), 3),
        "line": {"intercept": round(float(c), 3), "per_composite": round(float(k), 6)},
        "at_73146_power": round(float(math.exp(loga) * IHARMONY4**b), 1),
        "at_73146_line": round(float(c + k * IHARMONY4), 1),
    }


def main() -> None:
    if sys.argv[1:2] == ["--timed-evaluate"]:  # internal: the evaluate stage with its loop timed
        timed_evaluate_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an iHarmony4-layout folder (benchmarks/make_iharmony4.py)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000, 16000])
    ap.add_argument("--work", default="/tmp/bench_scale")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--eval-ngf", type=int, default=16)
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(STEPS),
        help="without prepare: the reader / evaluate on the data an earlier run prepared in --work",
    )  # fmt: skip
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "scale.json"))
    ap.add_argument(
        "--previous", nargs="*", default=[],
        help="scale.json files of other runs on the same data: their steps are kept (none in --sizes: a merge)",
    )  # fmt: skip
    ap.add_argument("--reader", help=argparse.SUPPRESS)  # internal: run the reader on this store root
    a = ap.parse_args()
    if a.reader:
        reader_main(a.reader)
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results, load = [], [os.getloadavg()]
    steps = [s for s in a.steps if not (s == "evaluate" and a.skip_evaluate)]
    rows: dict[int, dict] = {}
    for path in a.previous:  # steps measured by other runs, e.g. side by side with this one
        prev = json.loads(Path(path).read_text())
        for r in prev["sizes"]:
            row = rows.setdefault(r["composites"], {"composites": r["composites"]})
            for step in STEPS:
                if step in r and not (r["composites"] in a.sizes and step in steps):
                    row[step] = {**r[step], "run": r[step].get("run", r.get("run", prev["command"]))}
        load = prev["load_average_1_5_15"] + load
    results = list(rows.values())
    for n in a.sizes:
        work = Path(a.work) / f"n{n}"
        if n not in rows:
            rows[n] = {"composites": n}
            results.append(rows[n])  # written after every step: a run that is stopped keeps what it measured
        if "prepare" in steps:
            subprocess.run(["rm", "-rf", str(work)], check=True)
            work.mkdir(parents=True)
        elif not (work / "manifest.json").exists():
            raise SystemExit(f"{work}: no manifest.json; run the prepare step first")
        run_steps(a, n, work, rows[n], steps, env, results, load)
    if not a.sizes:
        write(a, results, load)


def run_steps(
    a, n: int, work: Path, row: dict, steps: list[str], env: dict, results: list, load: list
) -> None:
    if "prepare" in steps:
        prep = measured(prepare_cmd(a.data, n, work, a.processes), env)
        manifest = json.loads((work / "manifest.json").read_text())
        shards = [s for split in manifest["shards"].values() for s in split]
        row["prepare"] = {
            **{k: prep[k] for k in ("seconds", "cpu_s", "peak_rss_mb", "load_1min")},
            "composites_per_s": round(n / prep["seconds"], 2),
            "composites_per_cpu_s": round(n / prep["cpu_s"], 2),
            "counts": manifest["counts"],
            "shards": len(shards),
            "shard_bytes": sum(s["bytes"] for s in shards),
        }
        write(a, results, [*load, os.getloadavg()])
    if "reader" in steps:
        rd = measured([sys.executable, __file__, "--data", a.data, "--reader", str(work / "store")], env)
        row["reader"] = {
            **json.loads(rd["last_line"]),
            **{k: rd[k] for k in ("seconds", "cpu_s", "peak_rss_mb", "load_1min")},
        }
        write(a, results, [*load, os.getloadavg()])
    if "evaluate" in steps:
        model = eval_model(work, a.eval_ngf)
        ev = measured(evaluate_cmd(work, model), env)
        loop = json.loads(ev["last_line"])
        assert loop["images"] == json.loads((work / "eval.json").read_text())["n_images"]
        row["evaluate"] = {
            **loop,
            "images_per_s": round(loop["images"] / loop["loop_s"], 2),
            "images_per_cpu_s": round(loop["images"] / loop["loop_cpu_s"], 2),
            **{k: ev[k] for k in ("seconds", "cpu_s", "peak_rss_mb", "load_1min")},
        }
    load.append(os.getloadavg())
    print(json.dumps(row), flush=True)
    write(a, results, load)


# (stage, what is timed): the whole process (wall "seconds", "cpu_s"), or the in-process loop
TIMED = {
    "prepare": {"process": ("seconds", "cpu_s")},
    "reader": {"epoch": ("epoch_s", "epoch_cpu_s"), "process": ("seconds", "cpu_s")},
    "evaluate": {"loop": ("loop_s", "loop_cpu_s"), "process": ("seconds", "cpu_s")},
}


def write(a, results: list[dict], load: list) -> None:
    results = sorted(results, key=lambda r: r["composites"])
    growth: dict = {}
    for stage, parts in TIMED.items():
        done = [r for r in results if stage in r]  # a step cut short at the largest size is left out
        if len(done) < 2:
            continue
        ns = [r["composites"] for r in done]
        g: dict = {"sizes": ns}
        for part, (wall_key, cpu_key) in parts.items():
            g[part] = {
                "cpu": fit(ns, [r[stage][cpu_key] for r in done]),
                "wall": fit(ns, [r[stage][wall_key] for r in done]),
            }
        mem = [r[stage]["peak_rss_mb"] for r in done]
        g["peak_rss_mb"] = mem
        g["memory_largest_over_smallest"] = round(mem[-1] / mem[0], 3)
        g["memory_largest_over_middle"] = round(mem[-1] / mem[len(mem) // 2], 3) if len(mem) > 2 else None
        g["memory_flat_within_10pct"] = abs(mem[-1] / mem[0] - 1) <= 0.10
        growth[stage] = g
    done = [r for r in results if "prepare" in r]
    if len(done) >= 2:
        ns, bytes_ = [r["composites"] for r in done], [r["prepare"]["shard_bytes"] for r in done]
        growth["shard_bytes"] = {
            "exponent": fit(ns, bytes_)["exponent"],
            "bytes_per_composite": round(bytes_[-1] / ns[-1]),
            "at_73146_gb": round(bytes_[-1] / ns[-1] * IHARMONY4 / 1e9, 2),
        }
    out = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{os.cpu_count()} CPU cores, shared with other jobs (load average beside every step)",
        "load_average_1_5_15": [[round(v, 2) for v in lv] for lv in load],
        "eval_model": f"RainNet (paper profile) at 256 px, ngf {a.eval_ngf}, untrained, CPU",
        "fit": "exponent b of t ~ N^b (log-log least squares) and the line t = c + k N over composites N; "
        "at_73146_*: both at iHarmony4's 73,146 composites; cpu: user + sys seconds of the process tree",
        "sizes": results,
        "growth": growth,
    }
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
