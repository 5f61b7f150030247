"""Evaluation streams: samples are read a bounded number ahead of use, and the shard test set is read a
row group at a time, so memory does not grow with the test set (numbers: benchmarks/memory.json)."""

from __future__ import annotations

import numpy as np

from components.data.images import encode_png
from components.evaluation import scoring as evaluation
from components.evaluation.scoring import Sample, iter_loaded, shard_samples
from components.storage import Store
from tests.prepare.conftest import SMALL, run_prepare


def test_loader_reads_a_bounded_number_of_samples_ahead():
    img, mask = encode_png(np.full((8, 8, 3), 100, np.uint8)), encode_png(np.pad(np.full((4, 4), 255, np.uint8), 2))
    pulled = []

    def samples():
        for i in range(50):
            pulled.append(i)
            yield Sample(f"s{i}", "x", img, mask, img)

    for k, (sample, (comp, m, _real)) in enumerate(iter_loaded(samples(), threads=3)):
        assert sample.path == f"s{k}" and comp.shape == (8, 8, 3) and m.shape == (8, 8)
        assert len(pulled) - k <= 6  # at most 2 * threads read ahead of the one in use
    assert len(pulled) == 50


def test_shard_test_set_streams_every_row_once(tmp_path):
    manifest = run_prepare(tmp_path, *SMALL, "prepare.rows_per_row_group=2")
    samples = shard_samples(Store(str(tmp_path / "store")), "default", "test")
    assert len(samples) == manifest["counts"]["test"]
    paths = [s.path for s in samples]
    assert len(paths) == len(set(paths)) == len(samples)
    assert sorted(samples.keys()) == sorted((s.subset, s.path) for s in samples)
    assert evaluation.test_set_id(samples) == evaluation.test_set_id(list(samples))
