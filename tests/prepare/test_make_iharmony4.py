"""The iHarmony4-layout generator (components/data/make_iharmony4.py): the layout and naming rule of the
dataset, exact counts, split lists that keep a real's composites together, and ``prepare`` reading it
as an ``iharmony4`` source."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from benchmarks.make_iharmony4 import main as make_cli
from components.data import iharmony4
from components.data.make_iharmony4 import make_iharmony4
from components.storage import Store
from tests.prepare.conftest import SMALL, png, read_rows, run_prepare


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ih4")
    summary = make_iharmony4(str(root), count=43, size=48, test_fraction=0.25, processes=2)
    return root, summary


def test_layout_names_and_counts(folder):
    root, summary = folder
    sub = root / "HSynth"
    comps = sorted(p.name for p in (sub / iharmony4.COMPOSITES).iterdir())
    assert len(comps) == 43 == summary["composites"]
    assert summary["reals"] == 11  # 4 composites per real (2 masks x 2), the last real has 3
    assert len(list((sub / iharmony4.REALS).iterdir())) == 11
    assert len(list((sub / iharmony4.MASKS).iterdir())) == summary["masks"] == 22
    for name in comps:  # the iHarmony4 naming rule finds every composite's mask and real
        mask_name, real_name = iharmony4.mask_and_real_names(name)
        comp, mask = (
            png((sub / iharmony4.COMPOSITES / name).read_bytes()),
            png((sub / iharmony4.MASKS / mask_name).read_bytes()),
        )
        real = png((sub / iharmony4.REALS / real_name).read_bytes())
        assert comp.shape == real.shape and mask.shape == real.shape[:2] and max(real.shape[:2]) <= 48
        assert 0 < (mask >= 128).mean() < 1
        # the background is the real's (JPEG aside), the foreground was recoloured
        diff = np.abs(comp.astype(int) - real.astype(int)).mean(-1)
        assert diff[mask < 128].mean() < diff[mask >= 128].mean()


def test_split_lists_cover_every_composite_once_and_keep_a_real_together(folder):
    root, summary = folder
    store, sub = Store(), str(root / "HSynth")
    train = iharmony4.composite_names(store, sub, "HSynth", "train")
    test = iharmony4.composite_names(store, sub, "HSynth", "test")
    assert sorted(train + test) == sorted(p.name for p in (root / "HSynth" / iharmony4.COMPOSITES).iterdir())
    assert not set(train) & set(test) and test and train
    assert (len(train), len(test)) == (summary["train"], summary["test"])
    reals = {
        s: {iharmony4.parse_composite_name(n)[0] for n in names}
        for s, names in (("train", train), ("test", test))
    }
    assert not reals["train"] & reals["test"]


def test_prepare_reads_it_as_an_iharmony4_source(folder, tmp_path):
    root, summary = folder
    manifest = run_prepare(tmp_path, *SMALL, f"prepare.sources=[{{kind: iharmony4, path: {root}}}]")
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["skipped"] == {}
    counts = manifest["counts"]
    assert sum(counts.values()) == 43 and counts["test"] == summary["test"]
    assert counts["val"] > 0 and counts["train"] + counts["val"] == summary["train"]
    rows = read_rows(manifest)
    assert Counter(r["source"] for r in rows) == {"iharmony4": 43}
    assert {r["subset"] for r in rows} == {"HSynth"}


def test_same_files_whatever_the_processes_and_cli(folder, tmp_path, capsys):
    root, _ = folder
    assert make_cli([str(tmp_path), "--count", "43", "--size", "48", "--test-fraction", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out)["composites"] == 43
    for sub in (iharmony4.COMPOSITES, iharmony4.MASKS, iharmony4.REALS):
        ours = sorted((tmp_path / "HSynth" / sub).iterdir())
        assert [p.name for p in ours] == sorted(p.name for p in (root / "HSynth" / sub).iterdir())
        assert all(p.read_bytes() == (root / "HSynth" / sub / p.name).read_bytes() for p in ours)
    assert (tmp_path / "HSynth" / "HSynth_test.txt").read_text() == (
        root / "HSynth" / "HSynth_test.txt"
    ).read_text()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="count"):
        make_iharmony4(str(tmp_path), count=0)
