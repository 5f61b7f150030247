"""Real cut-and-paste composites (no ground truth) through each model, at native resolution.

    .venv/bin/python benchmarks/real_composites.py \
        --model pct=benchmarks/runs/lalonde-pct/generator.pt \
        --model image=benchmarks/runs/lalonde-image/generator.pt \
        --data ../shared/data/lalonde/real_composites --count 6 --out reports/real_composites.png

Columns: composite | mask | one per model (through the ``Predictor``, as ``harmonize`` returns it). The
composites are picked by a hash of their file names (the same ones every time), as the paper's Fig. 5-7
show real composites next to each method's output.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.data import images  # noqa: E402
from components.evaluation.showcase import Row, showcase_png  # noqa: E402
from components.inference.predictor import Predictor  # noqa: E402
from components.storage import Store  # noqa: E402


def pick(folder: Path, count: int) -> list[tuple[Path, Path]]:
    comps = sorted((folder / "images").glob("*.jpg")) + sorted((folder / "images").glob("*.png"))
    comps.sort(key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    pairs = []
    for c in comps:
        masks = list((folder / "masks").glob(c.stem + ".*"))
        if masks:
            pairs.append((c, masks[0]))
        if len(pairs) == count:
            break
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=URI (file, runs:/, models:/)")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/lalonde/real_composites"))
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--out", default=str(REPO / "reports" / "real_composites.png"))
    args = p.parse_args(argv)
    predictors = {}
    for spec in args.model:
        label, _, uri = spec.partition("=")
        predictors[label] = Predictor.from_uri(uri, device="cpu")
    rows = [
        Row(c.name, images.read_image(str(c)), images.read_mask(str(m), soft=True))
        for c, m in pick(Path(args.data), args.count)
    ]
    Store().write_bytes(args.out, showcase_png(rows, predictors))
    print(f"wrote {args.out}: {len(rows)} composites x {list(predictors)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
