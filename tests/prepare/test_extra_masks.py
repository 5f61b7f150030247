"""``photos_masks`` with ``extra_masks``: more object-like masks per train photo, none for val / test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.errors import UserError

from .conftest import good_photos_masks, png, read_rows, run_prepare

SIZE = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return good_photos_masks(tmp_path_factory.mktemp("pm"), 6)


def _run(out, folder, extra: int, *more: str) -> dict:
    source = f"prepare.sources=[{{kind: photos_masks, path: {folder}, extra_masks: {extra}}}]"
    return run_prepare(out, f"prepare.image_size={SIZE}", "prepare.composites_per_photo=1", source, *more)


def test_extra_masks_train_only_deterministic(folder, tmp_path):
    manifest = _run(tmp_path / "a", folder, 2)
    rows = read_rows(manifest)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    extra = [r for r in rows if "_x" in r["sample_id"].split("/")[1]]
    hand = [r for r in rows if r not in extra]
    # 6 scenes: 4 train, 1 val, 1 test; extra masks only on train photos, same scene as their photo
    assert extra and {r["split"] for r in extra} == {"train"}
    assert {r["split"] for r in hand} == {"train", "val", "test"}
    train_scenes = {r["scene_id"] for r in hand if r["split"] == "train"}
    assert {r["scene_id"] for r in extra} <= train_scenes
    assert len(extra) <= 2 * len(train_scenes)
    (src,) = card["sources"]
    assert src["extra_masks"] == 2 and src["extra_mask_entries"] == 2 * len(train_scenes)
    assert card["counts"]["train"] == sum(r["split"] == "train" for r in rows)
    # the grown masks are object-like, differ from the hand-drawn one, and keep the background
    for r in extra:
        mask = png(r["mask"]) == 255
        hand_small = png(next(h["mask"] for h in hand if h["scene_id"] == r["scene_id"])) == 255
        assert mask.shape == hand_small.shape == (SIZE, SIZE)
        assert not np.array_equal(mask, hand_small)
        assert 0.0 < mask.mean() < 1.0
        comp, real = png(r["composite"]), png(r["real"])
        assert np.array_equal(comp[~mask], real[~mask])
    masks_of = {}
    for r in extra:
        masks_of.setdefault(r["scene_id"], []).append(r["mask"])
    assert any(len(set(m)) > 1 for m in masks_of.values())  # two different extra masks per photo
    # same params and seed: same bytes, whatever processes is
    again = _run(tmp_path / "b", folder, 2, "prepare.processes=2")
    for split in ("train", "val", "test"):
        assert [s["sha256"] for s in manifest["shards"][split]] == [
            s["sha256"] for s in again["shards"][split]
        ]
    # val / test are exactly what they are without extra masks
    plain = _run(tmp_path / "c", folder, 0)
    for split in ("val", "test"):
        assert [s["sha256"] for s in manifest["shards"][split]] == [
            s["sha256"] for s in plain["shards"][split]
        ]
    assert "extra_masks" not in json.loads((tmp_path / "c" / "card.json").read_text())["sources"][0]


def test_extra_masks_only_for_photos_masks(tmp_path):
    with pytest.raises(UserError, match="extra_masks"):
        run_prepare(tmp_path, "prepare.sources=[{kind: builtin, extra_masks: 1}]")
