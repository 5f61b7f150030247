"""Quality benchmark: train a variant through the real stages and score it the way users get it.

    .venv/bin/python benchmarks/bench_quality.py --profile lalonde-cpu --label lalonde-pct
    .venv/bin/python benchmarks/bench_quality.py --profile lalonde-cpu --label lalonde-image \
        -S model.generator.head=image

Runs ``pipeline.prepare`` (deterministic: the same dataset for every variant of a profile),
``pipeline.train`` and ``pipeline.evaluate`` as subprocesses with the profile and the overrides, each
variant writing its model and metrics under ``benchmarks/runs/<label>/`` (not committed), then appends
one record to ``benchmarks/quality.json`` (replacing an older record of the same label): the command,
the data, the head, the training wall time, and the test split's fMSE at native resolution through the
predictor next to the unharmonized composite's, by bins of the composite's own error, and the paper
protocol's numbers apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "quality.json"


def run(cmd: list[str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def overall(table: dict) -> dict:
    return {k: round(float(table["overall"][k]), 3) for k in ("mse", "psnr", "fmse", "fpsnr")}


def record(label: str, profile: str, overrides: list[str], train_s: float, folder: Path, argv: list[str]):
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
        "label": label,
        "command": "python benchmarks/bench_quality.py " + shlex.join(argv),
        "commit": git_commit(),
        "data": ev["data"],
        "profile": profile,
        "overrides": overrides,
        "model": spec.get("name"),
        "head": spec.get("head", "image"),
        "placement": spec.get("placement"),
        "ngf": spec.get("ngf"),
        "image_size": ev["image_size"],
        "epochs": tr.get("epochs_done"),
        "train_minutes": round(train_s / 60.0, 2),
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


def _r(v):
    return None if v is None else round(float(v), 3)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--profile", default=None, help="profiles/<name>.yaml merged over params.yaml")
    p.add_argument("--label", required=True, help="name of this variant (its record and run folder)")
    p.add_argument("-S", dest="overrides", action="append", default=[], help="params override key=value")
    p.add_argument("--skip-prepare", action="store_true", help="the profile's dataset is already prepared")
    args = p.parse_args(argv)

    py = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable
    folder = REPO / "benchmarks" / "runs" / args.label
    folder.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(folder, REPO)
    profile = ["--profile", args.profile] if args.profile else []
    sets = [x for o in args.overrides for x in ("-S", o)]
    outs = [
        "-S", f"train.weights_out={rel}/generator.pt", "-S", f"train.metrics_out={rel}/train.json",
        "-S", f"train.plots_out={rel}/train_epochs.csv", "-S", f"train.run_name=quality-{args.label}",
        "-S", f"evaluate.model={rel}/generator.pt", "-S", f"evaluate.summary_out={rel}/eval.json",
        "-S", f"evaluate.per_image_out={rel}/eval_per_image.csv", "-S", f"evaluate.summary_md={rel}/eval.md",
        "-S", f"evaluate.showcase_out={rel}/showcase.png",
    ]  # fmt: skip
    if not args.skip_prepare:
        run([py, "-m", "pipeline.prepare", *profile, *sets])
    train_s = run([py, "-m", "pipeline.train", *profile, *sets, *outs])
    run([py, "-m", "pipeline.evaluate", *profile, *sets, *outs])

    rec = record(args.label, args.profile or "default", args.overrides, train_s, folder, argv)
    runs = json.loads(OUT.read_text()) if OUT.is_file() else []
    runs = [r for r in runs if r.get("label") != args.label] + [rec]
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(runs, indent=2) + "\n")
    tmp.replace(OUT)
    print(json.dumps({k: rec[k] for k in ("label", "head", "train_minutes", "fmse", "composite_fmse")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
