"""The shared real-photo data: lalonde as ``photos_masks`` and its LHarmony sample as ``iharmony4``."""

from __future__ import annotations

import json

import numpy as np

from components.data.sources import stable_unit

from .conftest import png, read_rows, run_prepare


def test_lalonde_photos_masks_and_lharmony(lalonde, tmp_path):
    sources = (
        f"prepare.sources=[{{kind: photos_masks, path: {lalonde}, limit: 60}},"
        f" {{kind: iharmony4, path: {lalonde / 'LHarmony'}, limit: 20}}]"
    )
    manifest = run_prepare(tmp_path, "prepare.image_size=32", "prepare.composites_per_photo=1", sources)
    card = json.loads((tmp_path / "card.json").read_text())
    rows = read_rows(manifest)
    synth = [r for r in rows if r["source"] == "photos_masks"]
    ih = [r for r in rows if r["source"] == "iharmony4"]
    assert len(ih) == 20 and 50 <= len(synth) <= 60
    # LHarmony's list file says test; its subset name and per-image method are kept
    assert {(r["split"], r["subset"]) for r in ih} == {("test", "LHarmony")}
    methods = dict(
        line.split("\t") for line in (lalonde / "LHarmony" / "methods.tsv").read_text().split("\n") if line
    )
    assert all(r["method"] == methods[r["scene_id"].split("/")[1]] for r in ih)
    # photos: split by a hash of the photo id, one scene each; background identical to the real photo
    for r in synth:
        u = stable_unit(r["scene_id"])
        assert r["split"] == ("test" if u < 0.1 else "val" if u < 0.2 else "train")
        comp, mask, real = png(r["composite"]), png(r["mask"]) == 255, png(r["real"])
        assert np.array_equal(comp[~mask], real[~mask])
    assert card["subsets"]["test"]["LHarmony"] == 20
    assert sum(card["counts"].values()) == len(rows)
