"""Quality benchmark: train a recipe over several seeds through the real stages and score it the way
users get it, as a mean with its spread.

    python benchmarks/bench_quality.py --label default --seeds 3
    python benchmarks/bench_quality.py --profile lalonde-cpu --label lalonde --seeds 3
    python benchmarks/bench_quality.py --profile lalonde-cpu --label lalonde --seed-list 2 --skip-prepare
    python benchmarks/bench_quality.py --label default-no-deadzone --train-label default --skip-prepare \
        -S train.calibrate_low_bin_max=null       # the same trainings, calibrated another way

Runs ``pipeline.prepare`` once (deterministic: the same dataset for every seed and variant of a
profile), then per seed ``pipeline.train`` (``-S train.seed=<s>``: the networks' initialisation and the
order of the training data, not the dataset) and ``pipeline.evaluate`` as subprocesses with the profile
and the overrides, each writing its model and metrics under ``benchmarks/runs/<label>/seed<s>/`` (not
committed). ``benchmarks/quality.json`` holds ``runs`` (one record per training: the command, the
data, the head, the seed, the training wall time and the load average during it, the test split's fMSE
at native resolution through the predictor next to the unharmonized composite's, by bins of the
composite's own error, the paper protocol's numbers apart) and ``seed_groups`` (per label: the mean and
standard deviation over the seeds recorded so far, so seeds run in separate calls add up).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "quality.json"


def run(cmd: list[str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


class LoadSampler:
    """The 1-minute load average every ``every`` seconds while a command runs: the machine is shared, and
    a wall time means little without the load it was taken under."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {
            "mean": _r(statistics.fmean(self.samples)),
            "max": _r(max(self.samples)),
            "cpus": os.cpu_count(),
        }


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def overall(table: dict) -> dict:
    return {k: round(float(table["overall"][k]), 3) for k in ("mse", "psnr", "fmse", "fpsnr")}


def record(label: str, seed: int, profile: str, overrides: list[str], train_s: float, load: dict, folder: Path,
           argv: list[str]):  # fmt: skip
    ev = json.loads((folder / "eval.json").read_text())
    tr = json.loads((folder / "train.json").read_text())
    spec = ev["generator"]
    comp, model = ev["composite"], ev["harmonized"]
    bins = {
        name: {
            "n": model["by_composite_error"][name]["n"],
            "fmse": _r(model["by_composite_error"][name]["fmse"]),
            "composite_fmse": _r(comp["by_composite_error"][name]["fmse"]),
        }
        for name in model.get("by_composite_error", {})
    }
    paper = ev["paper"]
    return {
        "label": f"{label}-seed{seed}",
        "group": label,
        "seed": seed,
        "command": "python benchmarks/bench_quality.py " + shlex.join(argv),
        "commit": git_commit(),
        "data": ev["data"],
        "dataset_hash": ev.get("dataset_hash"),
        "profile": profile,
        "overrides": overrides,
        "model": spec.get("name"),
        "head": spec.get("head", "image"),
        "placement": spec.get("placement"),
        "ngf": spec.get("ngf"),
        "image_size": ev["image_size"],
        "epochs": tr.get("epochs_done"),
        "train_minutes": epoch_minutes(folder) or round(train_s / 60.0, 2),  # the epochs' own time
        "stage_minutes": round(train_s / 60.0, 2),  # this call's train stage (a resumed one: calibration)
        "loadavg_during_train": load,
        "n_test_images": ev["n_images"],
        "resolution": "native, through the predictor",
        "fmse": _r(model["overall"]["fmse"]),
        "composite_fmse": _r(comp["overall"]["fmse"]),
        "fmse_ratio": _r(model["overall"]["fmse"] / comp["overall"]["fmse"]),
        "psnr": _r(model["overall"]["psnr"]),
        "composite_psnr": _r(comp["overall"]["psnr"]),
        "fmse_by_composite_error": bins,
        "by_method": ev.get("by_method", {}),
        "val_fmse": _r(tr.get("val_fmse")),
        "val_composite_fmse": _r((tr.get("composite") or {}).get("val_fmse")),
        "strength": tr.get("strength"),  # train.calibrate: the correction's strength fitted on val
        "val_fmse_calibrated": _r(tr.get("val_fmse_calibrated")),
        "paper_protocol": {
            "image_size": ev["image_size"],
            "harmonized": overall(paper["harmonized"]),
            "composite": overall(paper["composite"]),
        },
    }


def epoch_minutes(folder: Path) -> float | None:
    """Minutes the training's epochs took (train_epochs.csv): unlike the stage's wall time, it survives a
    rerun that resumes a finished training (``--train-label``) and only recalibrates."""
    path = folder / "train_epochs.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        return round(sum(float(r["epoch_time_s"]) for r in csv.DictReader(f)) / 60.0, 2)


def _r(v):
    return None if v is None else round(float(v), 3)


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for one value: no spread measured) of a list of numbers."""
    return {
        "mean": _r(statistics.fmean(values)),
        "std": _r(statistics.stdev(values)) if len(values) > 1 else None,
        "min": _r(min(values)),
        "max": _r(max(values)),
    }


def seed_group(label: str, runs: list[dict]) -> dict:
    """Mean and spread over every recorded seed of ``label`` (each seed's latest record)."""
    rows = sorted((r for r in runs if r.get("group") == label), key=lambda r: r["seed"])
    first = rows[0]
    loads = [r["loadavg_during_train"]["mean"] for r in rows if r.get("loadavg_during_train")]
    out = {
        "label": label,
        "profile": first["profile"],
        "overrides": first["overrides"],
        "data": first["data"],
        "head": first["head"],
        "n_seeds": len(rows),
        "seeds": [r["seed"] for r in rows],
        "composite_fmse": first["composite_fmse"],
        "fmse": spread([r["fmse"] for r in rows]),
        "fmse_ratio": spread([r["fmse_ratio"] for r in rows]),
        "val_fmse": spread([r["val_fmse"] for r in rows]),
        "train_minutes": spread([r["train_minutes"] for r in rows]),
        "loadavg_during_train": spread(loads) if loads else None,
        "fmse_by_composite_error": {},
        "each_seed": [
            {k: r.get(k) for k in ("seed", "commit", "fmse", "fmse_ratio", "val_fmse", "train_minutes")}
            | {
                "bin_0_300_ratio": _bin_ratio(r, "0-300"),
                "loadavg": (r.get("loadavg_during_train") or {}).get("mean"),
            }
            for r in rows
        ],
    }
    for name, b in first["fmse_by_composite_error"].items():
        out["fmse_by_composite_error"][name] = {
            "composite_fmse": b["composite_fmse"],
            "fmse": spread([r["fmse_by_composite_error"][name]["fmse"] for r in rows]),
            "ratio": spread([_bin_ratio(r, name) for r in rows]),
        }
    return out


def _bin_ratio(rec: dict, name: str) -> float:
    b = rec["fmse_by_composite_error"][name]
    return _r(b["fmse"] / b["composite_fmse"])


def load_records() -> dict:
    """``{"runs": [...], "seed_groups": [...]}`` (an older file was a bare list of runs)."""
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if isinstance(data, list):
        data = {"runs": data}
    return {"runs": data.get("runs", []), "seed_groups": data.get("seed_groups", [])}


def save_record(rec: dict) -> dict:
    """Add (or replace) one seed's run and recompute its group; write atomically, under a lock (seeds may
    run as separate processes side by side)."""
    with open(REPO / "benchmarks" / "runs" / ".quality.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _save_record(rec)


def _save_record(rec: dict) -> dict:
    data = load_records()
    data["runs"] = [r for r in data["runs"] if r.get("label") != rec["label"]] + [rec]
    group = seed_group(rec["group"], data["runs"])
    data["seed_groups"] = [g for g in data["seed_groups"] if g["label"] != rec["group"]] + [group]
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(OUT)
    return group


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--profile", default=None, help="profiles/<name>.yaml merged over params.yaml")
    p.add_argument("--label", required=True, help="name of this recipe (its seed group and run folders)")
    p.add_argument("-S", dest="overrides", action="append", default=[], help="params override key=value")
    p.add_argument("--seeds", type=int, default=3, help="train with seeds 0 .. N-1 (train.seed)")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead of --seeds")
    p.add_argument("--skip-prepare", action="store_true", help="the profile's dataset is already prepared")
    p.add_argument(
        "--train-label",
        default=None,
        help="reuse the finished trainings of this label (their run names and checkpoints): "
        "measures a change after the epochs (calibration, evaluation) without training again",
    )
    args = p.parse_args(argv)
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))

    py = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable
    profile = ["--profile", args.profile] if args.profile else []
    sets = [x for o in args.overrides for x in ("-S", o)]
    if not args.skip_prepare:
        run([py, "-m", "pipeline.prepare", *profile, *sets])
    for seed in seeds:
        folder = REPO / "benchmarks" / "runs" / args.label / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(folder, REPO)
        outs = [
            "-S", f"train.seed={seed}",
            "-S", f"train.weights_out={rel}/generator.pt", "-S", f"train.metrics_out={rel}/train.json",
            "-S", f"train.plots_out={rel}/train_epochs.csv", "-S", f"train.run_name=quality-{args.train_label or args.label}-s{seed}",
            "-S", f"evaluate.model={rel}/generator.pt", "-S", f"evaluate.summary_out={rel}/eval.json",
            "-S", f"evaluate.per_image_out={rel}/eval_per_image.csv", "-S", f"evaluate.summary_md={rel}/eval.md",
            "-S", f"evaluate.showcase_out={rel}/showcase.png",
        ]  # fmt: skip
        with LoadSampler() as load:
            train_s = run([py, "-m", "pipeline.train", *profile, *sets, *outs])
        run([py, "-m", "pipeline.evaluate", *profile, *sets, *outs])
        rec = record(args.label, seed, args.profile or "default", args.overrides, train_s, load.summary(),
                     folder, argv)  # fmt: skip
        group = save_record(rec)
        print(
            json.dumps(
                {k: rec[k] for k in ("label", "train_minutes", "fmse", "composite_fmse", "fmse_ratio")}
            )
        )
        print(json.dumps({k: group[k] for k in ("label", "n_seeds", "fmse", "fmse_ratio")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
