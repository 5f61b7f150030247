"""The dataset card: what is in the shards, where it came from, what was skipped, and a content hash.

The content hash covers every row's id, split and image bytes (order-independent), so it changes when
and only when the data changes: training runs are tagged with it.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import numpy as np

FG_BINS = (0.0, 0.05, 0.15, 0.3, 0.5, 1.0)  # evaluation uses 0-5 / 5-15 / 15-100 %
MSE_BINS = (0.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, float("inf"))  # fg MSE, 0..255 scale
STRENGTH_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def row_digest(row: dict) -> str:
    h = hashlib.sha256()
    for col in ("sample_id", "split", "composite", "mask", "real"):
        value = row[col]
        h.update(value if isinstance(value, bytes) else value.encode())
        h.update(b"\0")
    return h.hexdigest()


class CardBuilder:
    """Accumulates per-row statistics while shards are written (rows are not kept in memory)."""

    def __init__(self):
        self.splits: Counter = Counter()
        self.subsets: dict[str, Counter] = defaultdict(Counter)
        self.methods: dict[str, Counter] = defaultdict(Counter)
        self.fg_ratio: dict[str, list[float]] = defaultdict(list)
        self.fg_mse: dict[str, list[float]] = defaultdict(list)
        self.strength: dict[str, list[float]] = defaultdict(list)
        self.heights: dict[str, list[int]] = defaultdict(list)
        self.widths: dict[str, list[int]] = defaultdict(list)
        self.scenes: dict[str, set[str]] = defaultdict(set)
        self.digests: list[tuple[str, str]] = []

    def add(self, row: dict) -> None:
        split = row["split"]
        self.splits[split] += 1
        self.subsets[split][row["subset"]] += 1
        self.methods[split][row["method"]] += 1
        self.fg_ratio[split].append(row["fg_ratio"])
        self.fg_mse[split].append(row["fg_mse"])
        if row.get("strength") is not None:  # synthesized composites only
            self.strength[split].append(row["strength"])
        self.heights[split].append(row["height"])
        self.widths[split].append(row["width"])
        self.scenes[split].add(row["scene_id"])
        self.digests.append((row["sample_id"], row_digest(row)))

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for sample_id, digest in sorted(self.digests):
            h.update(f"{sample_id}:{digest}\n".encode())
        return h.hexdigest()

    def build(self, **extra) -> dict:
        splits = sorted(self.splits, key=("train", "val", "test").index)
        hist, mse_hist, strength = {}, {}, {}
        for s in splits:
            counts, _ = np.histogram(self.fg_ratio[s], bins=FG_BINS)
            hist[s] = {
                f"{int(a * 100)}-{int(b * 100)}%": int(c)
                for a, b, c in zip(FG_BINS[:-1], FG_BINS[1:], counts, strict=True)
            }
            counts, _ = np.histogram(self.fg_mse[s], bins=MSE_BINS)
            mse_hist[s] = {
                f"{a:g}-{b:g}" if np.isfinite(b) else f">={a:g}": int(c)
                for a, b, c in zip(MSE_BINS[:-1], MSE_BINS[1:], counts, strict=True)
            }
            if self.strength[s]:
                counts, _ = np.histogram(self.strength[s], bins=STRENGTH_BINS)
                strength[s] = {
                    f"{a:g}-{b:g}": int(c)
                    for a, b, c in zip(STRENGTH_BINS[:-1], STRENGTH_BINS[1:], counts, strict=True)
                }
        card = {
            "format": "harmonize-dataset-card/1",
            **extra,
            "total": int(sum(self.splits.values())),
            "counts": {s: int(self.splits[s]) for s in splits},
            "scenes": {s: len(self.scenes[s]) for s in splits},
            "subsets": {s: dict(sorted(self.subsets[s].items())) for s in splits},
            "methods": {s: dict(sorted(self.methods[s].items())) for s in splits},
            "fg_ratio_histogram": hist,
            "fg_mse_mean": {s: round(float(np.mean(self.fg_mse[s])), 3) for s in splits},
            "fg_mse_histogram": mse_hist,
            "strength_histogram": strength,  # synthesized composites (blend strength t)
            # (height, width) ranges: train / val are image_size square, test keeps native sizes
            "sizes": {
                s: {
                    "height": [int(min(self.heights[s])), int(max(self.heights[s]))],
                    "width": [int(min(self.widths[s])), int(max(self.widths[s]))],
                }
                for s in splits
            },
            "content_hash": self.content_hash(),
        }
        return card
