"""The builtin source: the default dataset a fresh clone makes with no download."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from components.data.masks import is_plain_shape
from components.data.shards import SCHEMA
from components.data.sources import BUILTIN_PHOTOS

from .conftest import SMALL, png, read_rows, run_prepare


def test_builtin_triplets_are_valid_composites(builtin_run):
    out, manifest = builtin_run
    rows = read_rows(manifest)
    card = json.loads((out / "card.json").read_text())
    assert pq.read_schema(manifest["shards"]["train"][0]["uri"]).remove_metadata() == SCHEMA
    assert card["total"] == len(rows) > 0
    assert card["content_hash"] == manifest["content_hash"]
    train_methods = {"lab_transfer", "rgb_transfer", "histogram", "retouch", "tone_curve"}
    assert {r["method"] for r in rows if r["split"] != "test"} == train_methods
    assert {r["method"] for r in rows if r["split"] == "test"} <= train_methods | {"idt"}
    for r in rows:
        comp, mask, real = png(r["composite"]), png(r["mask"]), png(r["real"])
        assert comp.shape == real.shape and mask.shape == real.shape[:2]
        if r["split"] != "test":
            assert real.shape == (32, 32, 3)
        else:  # builtin crops at their native size, the longer side capped at test_max_side (256)
            assert 32 < max(real.shape[:2]) <= 256
        assert (r["height"], r["width"]) == real.shape[:2]
        assert 0 < r["strength"] <= 1
        assert set(np.unique(mask)) <= {0, 255}
        fg = mask == 255
        # only masked pixels change: the background is byte-identical to the real photo
        assert np.array_equal(comp[~fg], real[~fg]), r["sample_id"]
        assert 0.03 <= fg.mean() <= 0.5 and abs(fg.mean() - r["fg_ratio"]) < 1e-6
        assert not is_plain_shape(fg), f"{r['sample_id']}: mask is a plain box/ellipse"
        d = comp[fg].astype(float) - real[fg].astype(float)
        assert 10.0 <= (d * d).mean() <= 2500.0
        assert abs((d * d).mean() - r["fg_mse"]) < 1e-2


def test_splits_by_scene_each_split_nonempty(builtin_run):
    _, manifest = builtin_run
    rows = read_rows(manifest)
    scenes: dict[str, set] = {}
    for r in rows:
        scenes.setdefault(r["scene_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in scenes.values()), scenes
    assert {next(iter(s)) for s in scenes.values()} == {"train", "val", "test"}
    # the stereo motorcycle pair is one scene
    moto = {r["split"] for r in rows if "motorcycle" in r["sample_id"]}
    assert len(moto) == 1
    assert len(scenes) == len({v[0] for v in BUILTIN_PHOTOS.values()})


def test_same_seed_same_bytes_any_process_count(builtin_run, tmp_path):
    out, manifest = builtin_run
    again = run_prepare(tmp_path / "a", *SMALL, "prepare.processes=2")
    other = run_prepare(tmp_path / "b", *SMALL, "prepare.seed=1")
    for split in ("train", "val", "test"):
        a = [s["sha256"] for s in manifest["shards"][split]]
        assert a == [s["sha256"] for s in again["shards"][split]]
    assert again["content_hash"] == manifest["content_hash"]
    assert (tmp_path / "a" / "samples.png").read_bytes() == (out / "samples.png").read_bytes()
    assert other["content_hash"] != manifest["content_hash"]


def test_stale_and_half_written_shards_are_removed(tmp_path):
    folder = tmp_path / "store" / "datasets" / "default"
    folder.mkdir(parents=True)
    (folder / "train-00007.parquet").write_bytes(b"old")
    (folder / "val-00000.parquet.tmp-0123abcd").write_bytes(b"half")
    (folder / "notes.txt").write_text("user file")
    manifest = run_prepare(tmp_path, *SMALL, "prepare.crops_per_photo=1")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["manifest.json", "notes.txt", manifest["version"]])
    listed = sorted(s["file"] for v in manifest["shards"].values() for s in v)
    assert sorted(f"{manifest['version']}/{p.name}" for p in (folder / manifest["version"]).iterdir()) == listed
