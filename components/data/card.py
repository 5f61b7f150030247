"""The dataset card: what is in the shards, where it came from, what was skipped, and a content hash.

The content hash covers every row's id, split and image bytes (order-independent), so it changes when
and only when the data changes: training runs are tagged with it.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import numpy as np

FG_BINS = (0.0, 0.05, 0.15, 0.3, 0.5, 1.0)  # evaluation uses 0-5 / 5-15 / 15-100 %


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
        self.scenes: dict[str, set[str]] = defaultdict(set)
        self.digests: list[tuple[str, str]] = []

    def add(self, row: dict) -> None:
        split = row["split"]
        self.splits[split] += 1
        self.subsets[split][row["subset"]] += 1
        self.methods[split][row["method"]] += 1
        self.fg_ratio[split].append(row["fg_ratio"])
        self.fg_mse[split].append(row["fg_mse"])
        self.scenes[split].add(row["scene_id"])
        self.digests.append((row["sample_id"], row_digest(row)))

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for sample_id, digest in sorted(self.digests):
            h.update(f"{sample_id}:{digest}\n".encode())
        return h.hexdigest()

    def build(self, **extra) -> dict:
        splits = sorted(self.splits, key=("train", "val", "test").index)
        hist = {}
        for s in splits:
            counts, _ = np.histogram(self.fg_ratio[s], bins=FG_BINS)
            hist[s] = {
                f"{int(a * 100)}-{int(b * 100)}%": int(c)
                for a, b, c in zip(FG_BINS[:-1], FG_BINS[1:], counts, strict=True)
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
            "content_hash": self.content_hash(),
        }
        return card
