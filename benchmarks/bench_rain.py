"""Benchmark: our RAIN vs the straightforward per-region RAIN, side by side, forward + backward.

Cases: a RAIN layer at (8, 64, 128, 128) and (8, 512, 16, 16), and a full RainNet generator training
step (forward, backward, Adam) at 256x256, ngf 64, batch 4, with our layers vs reference layers.
Each (case, variant) runs in its own subprocess so its peak RSS is its own; peak memory is reported
as peak RSS minus the RSS after the inputs and model were built (the working memory of the step).

    .venv/bin/python benchmarks/bench_rain.py [--reps 3] [--out benchmarks/rain.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "layer_8x64x128x128": {"kind": "layer", "shape": [8, 64, 128, 128]},
    "layer_8x512x16x16": {"kind": "layer", "shape": [8, 512, 16, 16]},
    "rainnet_step_256_ngf64_b4": {"kind": "generator", "size": 256, "ngf": 64, "batch": 4},
}


def reference_layer_cls():
    """The straightforward RAIN: mask resized in every layer, each region in its own two-pass sweep."""
    import torch.nn.functional as F
    from torch import nn

    from components.models.rain import RAIN, MaskPyramid

    class ReferenceRAIN(RAIN):
        def forward(self, x, mask):
            raw = mask.mask if isinstance(mask, MaskPyramid) else mask
            m = F.interpolate(raw.float(), size=x.shape[-2:], mode="nearest")
            eps = self.eps

            def stats(region):
                n = region.sum((2, 3), keepdim=True)
                mu = (x * region).sum((2, 3), keepdim=True) / (n + eps)
                var = (region * (x - mu) ** 2).sum((2, 3), keepdim=True) / (n + eps)
                return mu, (var + eps).sqrt()

            def v(p):
                return p[None, :, None, None]

            mu_b, sig_b = stats(1 - m)
            mu_f, sig_f = stats(m)
            y_b = ((x - mu_b) / sig_b * (1 + v(self.bg_gamma)) + v(self.bg_beta)) * (1 - m)
            y_f = (((x - mu_f) / sig_f * sig_b + mu_b) * (1 + v(self.fg_gamma)) + v(self.fg_beta)) * m
            return y_f + y_b

    assert issubclass(ReferenceRAIN, nn.Module)
    return ReferenceRAIN


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(case: str, variant: str, reps: int) -> dict:
    """Run one (case, variant) in this process and return timings and memory."""
    import torch

    from components.models import RAIN, RainNet

    torch.manual_seed(0)
    spec = CASES[case]
    layer_cls = RAIN if variant == "ours" else reference_layer_cls()
    if spec["kind"] == "layer":
        b, c, h, w = spec["shape"]
        x = torch.randn(b, c, h, w, requires_grad=True)
        mask = (torch.rand(b, 1, 256, 256) > 0.7).float()  # full-size mask, resized to the layer
        layer = layer_cls(c)
        grad_out = torch.randn(b, c, h, w)

        def step():
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x, mask).backward(grad_out)

    else:
        size, batch = spec["size"], spec["batch"]
        model = RainNet(placement="rain-decoder", ngf=spec["ngf"], image_size=size)
        if variant == "reference":
            for mod in list(model.modules()):
                for name, child in list(mod.named_children()):
                    if isinstance(child, RAIN):
                        ref = layer_cls(child.num_features)
                        ref.load_state_dict(child.state_dict())
                        setattr(mod, name, ref)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
        comp = torch.rand(batch, 3, size, size) * 2 - 1
        real = torch.rand(batch, 3, size, size) * 2 - 1
        mask = torch.zeros(batch, 1, size, size)
        mask[:, :, size // 4 : 3 * size // 4, size // 5 : size // 2] = 1

        def step():
            opt.zero_grad(set_to_none=True)
            loss = (model(comp, mask) - real).abs().mean() * 100
            loss.backward()
            opt.step()

    base = rss_mb()  # inputs and model built; the warm-up step's peak counts too (optimizer state alike)
    step()  # warm-up
    times = []
    for _ in range(reps if spec["kind"] == "generator" else max(reps, 6)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "seconds_min": min(times),
        "seconds_all": times,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_setup_mb": base,
        "peak_working_mb": peak_rss_mb() - base,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "rain.json"))
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.reps)))
        return

    import torch

    results = {}
    for case in args.cases:
        row = {}
        for variant in ("reference", "ours"):
            cmd = [sys.executable, __file__, "--reps", str(args.reps), "--worker", case, variant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
            row[variant] = json.loads(out.strip().splitlines()[-1])
            print(case, variant, row[variant]["seconds_min"], row[variant]["peak_working_mb"], flush=True)
        row["speedup"] = row["reference"]["seconds_min"] / row["ours"]["seconds_min"]
        row["memory_ratio"] = row["ours"]["peak_working_mb"] / max(row["reference"]["peak_working_mb"], 1e-9)
        results[case] = {"spec": CASES[case], **row}

    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_rain.py", *sys.argv[1:]]),
        "what": "forward+backward time (min over reps) and peak working memory (peak RSS minus RSS after "
        "setup, before the warm-up step; one subprocess per variant); reference = per-region two-pass RAIN, mask resized per layer",
        "target": "speedup >= 2 and memory_ratio <= 1 on the layer cases",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "reps": args.reps,
        "note": "2-core machine shared with other jobs: absolute seconds are noisy; the ratio of min times "
        "measured back to back is what to read. Layer cases use max(reps, 6) repetitions.",
        "results": results,
    }
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(
        json.dumps(
            {k: {"speedup": v["speedup"], "memory_ratio": v["memory_ratio"]} for k, v in results.items()}
        )
    )


if __name__ == "__main__":
    main()
