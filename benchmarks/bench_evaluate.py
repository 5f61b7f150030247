"""Benchmark ``evaluate``: images/s of the scoring loop before and after batching, and the same metrics.

    python benchmarks/bench_evaluate.py --before <git rev>        # writes benchmarks/evaluate.json
    python benchmarks/bench_evaluate.py --before main --limit 64 --repeats 1 --out /tmp/e.json   # quicker

Needs the default pipeline's outputs in this checkout (``dvc repro train``: the prepare test shards and
``models/generator.pt``). Each measurement runs ``components.evaluation.scoring.evaluate`` in its own process on
the same model and test images, from this tree ("after", ``evaluate.batch_size`` images per network
batch) and from ``--before`` (the code at that revision, extracted to a temporary folder: one image at a
time). The two alternate, so both see the same machine load; the load average is recorded beside each.
"Before" runs on the first ``--limit`` test images (it is slow); "after" runs on those and on the whole
split. The native-resolution metrics must agree to float tolerance; the paper protocol's numbers may
differ when the two revisions score it differently (the report says which).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(tree: str, limit: int | None, batch_size: int) -> dict:
    """In a child process: evaluate with the code of ``tree`` and report speed and the overall metrics."""
    sys.path.insert(0, tree)
    import itertools

    import torch

    from components.config import load_params
    try:
        from components.tracking.model_files import load_generator  # any URI, MLflow's too
    except ImportError:  # a --before revision that read every URI in components.checkpoint
        from components.checkpoint import load_generator  # type: ignore[no-redef]
    try:
        from components.evaluation import scoring as evaluation
        from components.inference.predictor import Predictor
    except ImportError:  # a --before revision from before the issue-20 layout
        from components.predictor import Predictor  # type: ignore[no-redef]

        from components import evaluation  # type: ignore[no-redef]
    from components.storage import Store

    params = load_params(Path(tree) / "params.yaml")  # the tree's own keys; paths relative to this checkout
    model, info = load_generator(params.evaluate.model, map_location="cpu")
    kwargs = {"batch_size": batch_size} if "batch_size" in inspect.signature(Predictor).parameters else {}
    predictor = Predictor(model, int(info["image_size"]), mapping=params.harmonize.mapping, device="cpu",
                          info=info, **kwargs)  # fmt: skip
    samples = evaluation.shard_samples(Store.from_config(params.storage), params.prepare.name, "test")
    if limit:
        samples = list(itertools.islice(iter(samples), limit))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = evaluation.evaluate(predictor, samples, progress=False)
    seconds = time.perf_counter() - t0
    tables = evaluation.summaries(rows)
    return {
        "tree": tree,
        "batch_size": kwargs.get("batch_size", 1),
        "n_images": len(rows),
        "seconds": seconds,
        "images_per_s": len(rows) / seconds,
        "loadavg_1min_before_after": [load0[0], os.getloadavg()[0]],
        "torch_threads": torch.get_num_threads(),
        "native": {k: tables[k]["overall"] for k in ("composite", "harmonized")},
        "paper": {k: tables["paper"][k]["overall"] for k in ("composite", "harmonized")},
    }


def run_child(tree: str, limit: int | None, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--one", tree, "--batch-size", str(batch_size)]
    cmd += ["--limit", str(limit)] if limit else []
    env = {**os.environ, "PYTHONPATH": tree}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if res.returncode:
        raise RuntimeError(f"{tree} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def differences(a: dict, b: dict) -> dict:
    """Largest relative difference of the overall metrics, native and paper, between two runs."""
    out = {}
    for section in ("native", "paper"):
        worst = 0.0
        for who in ("composite", "harmonized"):
            for k in ("mse", "psnr", "fmse", "fpsnr"):
                x, y = a[section][who][k], b[section][who][k]
                worst = max(worst, abs(x - y) / max(abs(x), 1e-12))
        out[section] = worst
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", default="main", help="git revision of the one-at-a-time code")
    parser.add_argument("--limit", type=int, default=None, help="test images for the before/after pair (96)")
    parser.add_argument("--repeats", type=int, default=2, help="before/after pairs, alternating")
    parser.add_argument("--batch-size", type=int, default=None, help="default: params.yaml evaluate.batch_size")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "evaluate.json"))
    parser.add_argument("--no-full", action="store_true", help="skip the whole-split run of this tree")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.limit, args.batch_size or 16)))
        return
    sys.path.insert(0, str(REPO))
    from components.config import load_params

    batch = args.batch_size or load_params(REPO / "params.yaml").evaluate.batch_size
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip()  # fmt: skip
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before, "components", "pipeline", "params.yaml"], cwd=REPO,
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for _ in range(args.repeats):
            before = run_child(tmp, args.limit or 96, 1)
            after = run_child(str(REPO), args.limit or 96, batch)
            before["tree"], after["tree"] = f"{args.before} ({rev})", "this tree"
            pairs.append({"before": before, "after": after, "speedup": after["images_per_s"] / before["images_per_s"],
                          "max_rel_difference": differences(before, after)})  # fmt: skip
            print(json.dumps(pairs[-1]), file=sys.stderr)
    full = "not run (--no-full)"
    if not args.no_full:
        full = run_child(str(REPO), None, batch)
        full["tree"] = "this tree"
    report = {
        "command": " ".join(["python benchmarks/bench_evaluate.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "models/generator.pt of the default pipeline (dvc repro train)",
        "note": (
            "before: one image at a time (the --before revision); after: this tree, evaluate.batch_size "
            "images per network batch. Wall-clock under the machine's load at the time (loadavg beside "
            "each); compare the before/after pairs, measured alternately. 'paper' differs where the two "
            "revisions define the paper protocol differently (this tree: the authors' evaluate.py, "
            "docs/PAPER_PROTOCOL.md); 'native' must agree to float tolerance."
        ),
        "pairs": pairs,
        "speedup_median": sorted(p["speedup"] for p in pairs)[len(pairs) // 2],
        "full_split_after": full,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
