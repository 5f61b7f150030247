"""Benchmark the authors' checkpoint import: equivalence with their network, and harmonize cost of the result.

    git clone https://github.com/junleen/RainNet /tmp/rainnet-authors      # their code, never copied here
    python benchmarks/bench_import.py --authors /tmp/rainnet-authors       # writes benchmarks/import.json

Without ``--authors`` it says so and stops (exit 0): the equivalence needs their code.

Equivalence: their ``RainNet`` (imported from the given folder, ``models/networks.py``) gets random
weights (convs N(0, 0.02) as their ``init_weights``, RAIN affine parameters N(0, 0.3) so the layers do
something), is saved as their state dict and brought in by the product's importer
(``components.stages.import_model.load_authors``); both networks then harmonize the same random composites
and masks in eval mode: their ``processImage(comp, mask)`` against our ``forward(comp, mask)``, max abs
difference on [-1, 1] (target <= 1e-5), at 256 and 512 with the published layout (3 input channels), and
at 256 with 4 (composite + mask).

Harmonize cost: the imported 256 model (ngf 64, 54.8M parameters) through ``Predictor`` (what
``harmonize -m models:/rainnet/N`` runs: the network at 256, the ``poly2`` colour mapping to full size)
at 1024x1024 and 4096x4096, each size in its own process; peak RSS while harmonizing (the high-water
mark reset after the model is loaded) and while loading, apart; median of the repeats after one warm-up. Timings are taken on a shared machine: the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import io
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
TOLERANCE = 1e-5
SIZES = (1024, 4096)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def their_network(authors: Path, input_nc: int):
    """Their generator class from their folder, as their test.py builds it (RAIN, dropout on)."""
    sys.path.insert(0, str(authors))
    from models.networks import RainNet  # their package: the folder given on the command line
    from models.normalize import RAIN

    return RainNet(input_nc=input_nc, output_nc=3, ngf=64, norm_layer=RAIN, use_dropout=True)


def randomize(net, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            std = 0.3 if "ground_" in name else 0.02  # RAIN's foreground_/background_ gamma, beta
            p.copy_(torch.randn(p.shape, generator=g) * std)


def inputs(size: int, seed: int):
    """A composite in [-1, 1] and a binary mask: an ellipse plus a rectangle, off centre."""
    import torch

    g = torch.Generator().manual_seed(seed)
    comp = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ell = ((yy - 0.45 * size) / (0.2 * size)) ** 2 + ((xx - 0.6 * size) / (0.25 * size)) ** 2 <= 1
    rect = (yy > 0.6 * size) & (yy < 0.8 * size) & (xx > 0.1 * size) & (xx < 0.35 * size)
    return comp, (ell | rect).float()[None, None]


def equivalence(authors: Path, size: int, input_nc: int, seed: int = 0) -> dict:
    import torch

    from components.stages.import_model import load_authors

    theirs = their_network(authors, input_nc)
    randomize(theirs, seed)
    theirs.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "net_G_last.pth")
        torch.save(theirs.state_dict(), path)
        ours = load_authors(str(path), image_size=size, ngf=64, input_nc=input_nc).model
    comp, mask = inputs(size, seed + size)
    with torch.no_grad():
        a = theirs.processImage(comp.clone(), mask.clone())
        b = ours(comp.clone(), mask.clone())
    fg = mask.bool().expand_as(a)
    return {
        "size": size,
        "input_nc": input_nc,
        "max_abs_diff": float((a - b).abs().max()),
        "max_abs_diff_foreground": float((a - b).abs()[fg].max()),
        "output_range": [float(a.min()), float(a.max())],
        "within_tolerance": bool(float((a - b).abs().max()) <= TOLERANCE),
    }


def write_imported_generator(authors: Path, path: Path) -> dict:
    """Random authors weights through the importer, saved as the product's generator file."""
    import torch

    from components.checkpoint import save_generator
    from components.stages.import_model import load_authors

    theirs = their_network(authors, 3)
    randomize(theirs, 1)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    src = path.with_name("net_G_last.pth")
    src.write_bytes(buf.getvalue())
    imported = load_authors(str(src), image_size=256)
    save_generator(str(path), imported.model, imported.spec, 256)
    return imported.spec


def status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def latency_child(generator: str, size: int, repeats: int) -> dict:
    """In a child process: harmonize one size through the Predictor. Loading the 219 MB model has its own
    peak; the high-water mark is reset after it (/proc/self/clear_refs), so harmonize's peak is its own."""
    import gc

    import torch

    from components.inference.predictor import Predictor

    torch.set_num_threads(2)
    predictor = Predictor.from_uri(generator, device="cpu")
    params = sum(p.numel() for p in predictor.model.parameters())
    gc.collect()
    load_peak = rss_mb()
    rng = np.random.default_rng(size)
    comp = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 5 : 3 * size // 5] = 255
    loaded = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    predictor(comp, mask)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = predictor(comp, mask)
        times.append(time.perf_counter() - t0)
    assert np.array_equal(out[mask == 0], comp[mask == 0])  # background byte-identical
    peak = status_mb("VmHWM")
    return {
        "size": f"{size}x{size}",
        "network": f"{predictor.image_size}x{predictor.image_size}",
        "parameters": params,
        "latency_s_median": float(np.median(times)),
        "latency_s_min": float(min(times)),
        "repeats": repeats,
        "peak_rss_harmonize_mb": round(peak, 1),
        "rss_model_loaded_with_inputs_mb": round(loaded, 1),
        "peak_over_loaded_model_mb": round(peak - loaded, 1),
        "peak_rss_loading_mb": round(load_peak, 1),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--authors", type=Path, help="a fetched copy of junleen/RainNet (its working tree)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "import.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("GENERATOR", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(latency_child(args.child[0], int(args.child[1]), args.repeats)))
        return
    if args.authors is None:
        print("bench_import: skipped: no --authors PATH (a fetched copy of junleen/RainNet); nothing written")
        return
    if not (args.authors / "models" / "networks.py").is_file():
        sys.exit(f"bench_import: {args.authors}: no models/networks.py (not a copy of junleen/RainNet)")
    import torch

    torch.set_num_threads(2)
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = [equivalence(args.authors, s, nc) for s, nc in ((256, 3), (512, 3), (256, 4))]
    for r in rows:
        print(f"equivalence {r['size']} input_nc {r['input_nc']}: max abs diff {r['max_abs_diff']:.3g}")
    latency = []
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp, "generator.pt")
        spec = write_imported_generator(args.authors, gen)
        for size in SIZES:
            cmd = [sys.executable, __file__, "--child", str(gen), str(size), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
            latency.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"harmonize {size}: {latency[-1]['latency_s_median']:.2f} s, peak {latency[-1]['peak_rss_harmonize_mb']} MB"
            )
    commit = subprocess.run(
        ["git", "-C", str(args.authors), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    record = {
        "command": " ".join(["python benchmarks/bench_import.py", *sys.argv[1:]]),
        "authors_code": {"repository": "junleen/RainNet", "commit": commit.stdout.strip() or "unknown"},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": 2,
            "torch": torch.__version__,
        },  # fmt: skip
        "tolerance": TOLERANCE,
        "equivalence": rows,
        "all_within_tolerance": all(r["within_tolerance"] for r in rows),
        "imported_spec": spec,
        "harmonize_cpu": latency,
        "loadavg_1_5_15_at_start": load_before,
        "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "random weights (the cost does not depend on them); the published checkpoints are not "
        "downloaded here: the importer's checks and this equivalence make them load as the authors run them",
    }
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(record, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
