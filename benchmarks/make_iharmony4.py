"""Write an iHarmony4-layout folder of any size from the builtin photos (no download).

    .venv/bin/python -m benchmarks.make_iharmony4 OUT --count 16000 [--size 256] [--processes 2]

Then ``python -m pipeline.prepare --profile paper -S 'prepare.sources=[{kind: iharmony4, path: OUT}]'``
reads it like the real dataset. The generator is ``components/data/make_iharmony4.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.make_iharmony4 import make_iharmony4  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder (or s3://) to write <subset>/ into")
    ap.add_argument("--count", type=int, required=True, help="composites to write")
    ap.add_argument("--size", type=int, default=256, help="longer side of every image")
    ap.add_argument("--subset", default="HSynth")
    ap.add_argument("--masks-per-real", type=int, default=2)
    ap.add_argument("--composites-per-mask", type=int, default=2)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=1)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    summary = make_iharmony4(
        a.out, a.count, a.size, a.subset, a.masks_per_real, a.composites_per_mask, a.test_fraction, a.seed,
        a.processes,
    )  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
