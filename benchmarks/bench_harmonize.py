"""Benchmark ``harmonize``: CPU latency and peak memory by image size, and the full-resolution method's quality.

    python benchmarks/bench_harmonize.py                 # writes benchmarks/harmonize.json
    python benchmarks/bench_harmonize.py --quick         # fewer repeats / photos (smoke run)
    python benchmarks/bench_harmonize.py --quick --sizes 256 --no-quality --out /tmp/h.json   # minimal
    python benchmarks/bench_harmonize.py --before <rev> --methods affine poly2 --no-quality   # side by side

Latency: each (size, method) runs in its own process (so peak RSS is that method's at that size), through
``components.inference.predictor.Predictor`` with the default-profile generator (params.yaml model.generator at
prepare.image_size, random weights: the cost does not depend on the weights), after one warm-up call whose
output is checked: background (mask 0) byte-identical to the input, the object changed. ``--before``
times a git revision's code the same way, size by size beside this tree's, so both see the same load
(the 1-minute load average is recorded beside each).
Methods: the ``image`` head with the colour mapping (``poly2``) or plain upsampling, and the colour-
transform heads ``affine`` and ``pct`` (the transform map applied at full resolution in bands of rows).
Quality (needs ../shared/data/lalonde): photos upscaled to 1024x1024, their object recoloured at full
size, harmonized by (a) an oracle network that returns the real image at the network size, which
isolates the upsampling method, and (b) a small RainNet trained here; fMSE against the real at full
resolution and the foreground's gradient energy relative to the real photo's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LALONDE = REPO.parent / "shared" / "data" / "lalonde"
SIZES = (256, 1024, 4096)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# (method, generator head, Predictor mapping): the image head's two mappings, then the transform heads.
METHODS = (("poly2", "image", "poly2"), ("upsample", "image", "upsample"), ("affine", "affine", "poly2"),
           ("pct", "pct", "poly2"))  # fmt: skip


def latency_one(size: int, method: str, repeats: int, tree: Path = REPO) -> dict:
    """Run in a child process: time one (size, method), report peak RSS over the loaded-model baseline.
    ``tree``: whose code and params.yaml (this checkout, or ``--before``'s revision extracted)."""
    import torch

    from components.config import load_params
    from components.inference.predictor import Predictor
    from components.models.init import init_weights
    from components.models.registry import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    _, head, mapping = next(m for m in METHODS if m[0] == method)
    params = load_params(Path(tree) / "params.yaml")
    image_size = params.prepare.image_size
    spec = {**params.model.generator, "image_size": image_size, "head": head}
    model = init_weights(build_model(spec))
    if head != "image":  # off the identity start, so the transform is really applied to the foreground
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    axis = (np.arange(size, dtype=np.float32) - size / 2) ** 2  # a centred disc, no full-size temporaries
    mask = np.zeros((size, size), np.uint8)
    for row in range(size):
        mask[row] = np.where(axis[row] + axis < (0.28 * size) ** 2, 255, 0)
    predictor = Predictor(model, image_size, device="cpu", mapping=mapping)
    baseline = rss_mb()
    out = predictor(comp, mask)  # warm-up
    bg = mask == 0
    assert np.array_equal(out[bg], comp[bg]), "background pixels changed"  # byte-identical background
    assert (out[mask == 255] != comp[mask == 255]).any(), "the object was left as it was"
    times, loads = [], [os.getloadavg()[0]]
    for _ in range(repeats):
        t = time.perf_counter()
        predictor(comp, mask)
        times.append(time.perf_counter() - t)
    loads.append(os.getloadavg()[0])
    return {
        "size": f"{size}x{size}",
        "method": method,
        "pixels": size * size,
        "fg_ratio": float((mask > 0).mean()),
        "latency_s_median": float(np.median(times)),
        "latency_s_min": float(min(times)),
        "peak_rss_mb": rss_mb(),
        "peak_over_baseline_mb": rss_mb() - baseline,
        "input_mb": (comp.nbytes + mask.nbytes) / 2**20,
        "background_byte_identical": True,
        "loadavg_1min_before_after": loads,
        "network": {"spec": spec, "image_size": image_size},
    }


def latency_size(size: int, quick: bool, methods: list[str], tree: Path = REPO) -> dict:
    """Each method at one size, each in its own child process; ``<method>`` keys as in earlier reports."""
    out: dict = {"size": f"{size}x{size}", "pixels": size * size}
    for method in methods:
        cmd = [sys.executable, __file__, "--one", str(size), "--method", method, "--tree", str(tree)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        res = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True, cwd=REPO,
                             env=env)  # fmt: skip
        if res.returncode:
            raise RuntimeError(f"{size}x{size} {method} failed:\n{res.stderr[-4000:]}")
        one = json.loads(res.stdout.strip().splitlines()[-1])
        network = one.pop("network")
        out["fg_ratio"], out["input_mb"] = one.pop("fg_ratio"), one.pop("input_mb")
        out[method] = {"head": network["spec"].pop("head")}
        out[method] |= {k: v for k, v in one.items() if k not in ("size", "method", "pixels")}
        out["network"] = network  # the same generator for every method, but for its head
    if "poly2" in out and "upsample" in out:
        out["poly2_over_upsample_latency"] = out["poly2"]["latency_s_median"] / out["upsample"]["latency_s_median"]
    return out


def gradient_energy(img: np.ndarray, fg: np.ndarray) -> float:
    f = img.astype(np.float32).mean(-1)
    gx, gy = np.diff(f, axis=1)[:-1], np.diff(f, axis=0)[:, :-1]
    return float((gx**2 + gy**2)[fg[:-1, :-1]].mean())


def quality(n_photos: int, full: int = 1024) -> dict:
    """fMSE at full resolution and sharpness, per method, with an oracle and with a trained RainNet."""
    from PIL import Image

    from components.inference.predictor import MAPPINGS, Predictor
    from tests.serve import helpers

    Oracle = helpers.Oracle

    ids = helpers.photo_ids(LALONDE)
    rng = np.random.default_rng(0)
    trained_ids = ids[:6]
    model, spec = helpers.train_tiny_generator(LALONDE, trained_ids, size=32, steps=200, seed=1)
    results: dict = {}
    cases = [("oracle_32", 32, ids[100 : 100 + n_photos]), ("oracle_256", 256, ids[100 : 100 + n_photos])]
    cases.append(("rainnet_32_trained_here", 32, trained_ids))
    for label, size, photo_set in cases:
        fmse = {k: [] for k in ("composite", *MAPPINGS)}
        sharp = {k: [] for k in ("real", *MAPPINGS)}
        for pid in photo_set:
            real = np.asarray(
                Image.open(LALONDE / "photos" / f"{pid}.jpg")
                .convert("RGB")
                .resize((full, full), Image.BICUBIC)
            )
            m = np.asarray(
                Image.open(LALONDE / "masks" / f"{pid}.png").convert("L").resize((full, full), Image.NEAREST)
            )
            fg = m > 127
            comp = helpers.recolour(real, fg, rng, band=(100.0, 2500.0))
            mask = fg.astype(np.uint8) * 255
            net = Oracle(real, size) if label.startswith("oracle") else model
            fmse["composite"].append(helpers.fg_mse(comp, real, fg))
            sharp["real"].append(gradient_energy(real, fg))
            for mapping in MAPPINGS:
                out = Predictor(net, size, mapping=mapping, device="cpu")(comp, mask)
                assert np.array_equal(out[~fg], comp[~fg])
                fmse[mapping].append(helpers.fg_mse(out, real, fg))
                sharp[mapping].append(gradient_energy(out, fg))
        results[label] = {
            "network_size": size,
            "n_images": len(photo_set),
            "fmse_mean": {k: float(np.mean(v)) for k, v in fmse.items()},
            "fmse_median": {k: float(np.median(v)) for k, v in fmse.items()},
            "gradient_energy_vs_real": {
                k: float(np.mean(np.array(v) / np.array(sharp["real"])))
                for k, v in sharp.items()
                if k != "real"
            },
        }
    results["note"] = (
        f"{full}x{full} photos (lalonde, bicubic-upscaled from 256), object recoloured at full size (retouch: "
        "per-channel gamma/gain/offset + saturation, fg MSE 100..2500). oracle_*: the network replaced by "
        "the real image resized to the network size (isolates the method); rainnet_32_trained_here: a "
        "RainNet ngf 8 at 32x32 trained 200 L1 steps on other recolourings of the same 6 photos."
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and photos (smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sides to time")
    parser.add_argument("--no-quality", action="store_true", help="latency only (no lalonde quality run)")
    parser.add_argument("--methods", nargs="+", choices=[m[0] for m in METHODS], help="default: all")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "harmonize.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--method", choices=[m[0] for m in METHODS], help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--before", help="also time this git revision's code, alternating with this tree's")
    args = parser.parse_args()
    repeats = 2 if args.quick else 7
    if args.one:
        sys.path.insert(0, args.tree)
        print(json.dumps(latency_one(args.one, args.method, repeats, Path(args.tree))))
        return
    methods = args.methods or [m[0] for m in METHODS]
    latency, before = [], []
    with tempfile.TemporaryDirectory() as old_tree:
        if args.before:
            archive = subprocess.run(["git", "archive", args.before, "components", "pipeline", "params.yaml"],
                                     cwd=REPO, capture_output=True, check=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        for size in args.sizes:  # per size: the revision before, then this tree (same load, side by side)
            if args.before:
                before.append(latency_size(size, args.quick, methods, Path(old_tree)))
                print(json.dumps(before[-1]), file=sys.stderr)
            latency.append(latency_size(size, args.quick, methods))
            print(json.dumps(latency[-1]), file=sys.stderr)
    command = " ".join(["python benchmarks/bench_harmonize.py", *sys.argv[1:]])
    previous = json.loads(Path(args.out).read_text()).get("quality") if Path(args.out).is_file() else None
    if args.no_quality and isinstance(previous, dict):  # keep the last measured quality, said so
        quality_report = {**previous, "rerun": "no: kept from the previous run of this file (--no-quality)"}
    elif args.no_quality:
        quality_report = "not run (--no-quality)"
    elif (LALONDE / "photos").is_dir():
        quality_report = quality(6 if args.quick else 30)
    else:
        quality_report = "lalonde data absent"
    report = {
        "command": command,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": 2},
        "latency_cpu": latency,
        **({"before": {"revision": args.before, "latency_cpu": before}} if args.before else {}),
        "quality": quality_report,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
