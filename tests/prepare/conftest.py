"""Helpers for the prepare tests: run the stage in-process into a tmp folder, read the shards back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from components.data.sources import builtin_photo
from components.storage import Store
from pipeline.prepare import main

REPO = Path(__file__).resolve().parents[2]
SMALL = ["prepare.image_size=32", "prepare.crops_per_photo=2", "prepare.composites_per_photo=1"]  # 78 photos


def run_prepare(out: Path, *overrides: str, root: str | None = None) -> dict:
    """Run ``python -m pipeline.prepare`` in-process with outputs under ``out``; return the manifest."""
    args = ["--params", str(REPO / "params.yaml"), "--no-progress"]
    sets = [
        f"storage.root={root or out / 'store'}",
        f"prepare.card={out / 'card.json'}",
        f"prepare.manifest={out / 'manifest.json'}",
        f"prepare.samples_png={out / 'samples.png'}",
        *overrides,
    ]
    for s in sets:
        args += ["-S", s]
    assert main(args) == 0
    return json.loads((out / "manifest.json").read_text())


def read_rows(manifest: dict, store: Store | None = None) -> list[dict]:
    rows = []
    for split in ("train", "val", "test"):
        for shard in manifest["shards"][split]:
            data = (store or Store()).read_bytes(shard["uri"])
            rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return rows


def png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def save(path: Path, arr: np.ndarray, fmt: str | None = None, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    im.save(path, format=fmt)


def photo(i: int, size: int = 80) -> np.ndarray:
    """A real photo crop (builtin photos) for hand-made test folders."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
    img = builtin_photo(names[i % len(names)])
    s = min(img.shape[:2]) // 2
    y0 = (i * 37) % (img.shape[0] - s)
    x0 = (i * 53) % (img.shape[1] - s)
    return np.asarray(Image.fromarray(img[y0 : y0 + s, x0 : x0 + s]).resize((size, size), Image.LANCZOS))


def polygon_mask(i: int, size: int = 80) -> np.ndarray:
    """A hand-drawn-like object mask: an irregular polygon, 0/255."""
    rng = np.random.default_rng(i)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radius = rng.uniform(0.15, 0.35, 9) * size
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    pts = [
        (float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radius, strict=True)
    ]
    im = Image.new("L", (size, size), 0)
    ImageDraw.Draw(im).polygon(pts, fill=255)
    return np.asarray(im)


def good_photos_masks(folder: Path, n: int) -> Path:
    for i in range(n):
        save(folder / "photos" / f"good{i:02d}.jpg", photo(i))
        save(folder / "masks" / f"good{i:02d}.png", polygon_mask(i))
    return folder


@pytest.fixture(scope="session")
def builtin_run(tmp_path_factory) -> tuple[Path, dict]:
    """One small builtin dataset shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("builtin")
    return out, run_prepare(out, *SMALL)
