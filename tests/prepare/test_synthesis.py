"""Composite synthesis: every method, strengths, held-out methods, and the test split's native sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.config import load_params
from components.data import images, synthesis
from components.data.build import prepare_dataset
from components.errors import UserError
from components.storage import Store

from .conftest import REPO, SMALL, photo, png, polygon_mask, read_rows, run_prepare, save


def _pair(size: int = 24):
    """A real photo with an object mask, and the statistics of another photo's object."""
    real, other = photo(0, size), photo(2, size)
    mask, other_mask = polygon_mask(0, size) > 0, polygon_mask(3, size) > 0
    ref = synthesis.object_stats(other, other_mask, "other", np.random.default_rng(7))
    return real, mask, ref


@pytest.mark.parametrize("method", synthesis.METHODS)
def test_every_method_changes_only_the_object_and_is_deterministic(method):
    real, mask, ref = _pair()
    a = synthesis.apply(method, real, mask, ref, np.random.default_rng(3), strength=0.8)
    b = synthesis.apply(method, real, mask, ref, np.random.default_rng(3), strength=0.8)
    c = synthesis.apply(method, real, mask, ref, np.random.default_rng(4), strength=0.8)
    assert a.dtype == np.uint8 and a.shape == real.shape
    assert np.array_equal(a, b)  # same generator, same bytes
    assert np.array_equal(a[~mask], real[~mask])  # background untouched
    assert synthesis.fg_mse(a, real, mask) > 0
    if method not in ("lab_transfer", "rgb_transfer", "histogram"):  # these use no random draws
        assert not np.array_equal(a, c)


def test_reference_pixels_are_a_small_deterministic_subsample():
    img = photo(1, 96)
    mask = np.zeros((96, 96), bool)
    mask[:, :60] = True  # 5760 object pixels > REF_PIXELS
    s1 = synthesis.object_stats(img, mask, "x", np.random.default_rng(0))
    s2 = synthesis.object_stats(img, mask, "x", np.random.default_rng(0))
    assert s1.pixels.shape == (synthesis.REF_PIXELS, 3) and s1.pixels.dtype == np.uint8
    assert np.array_equal(s1.pixels, s2.pixels)
    small = synthesis.object_stats(img, polygon_mask(1, 96)[:, :] > 0, "y")
    assert len(small.pixels) <= synthesis.REF_PIXELS


def test_idt_moves_the_colour_distribution_to_the_reference():
    real, mask, ref = _pair(48)
    out = synthesis.apply("idt", real, mask, ref, np.random.default_rng(0))
    before = np.abs(real[mask].mean(0) - ref.rgb_mean).sum()
    after = np.abs(out[mask].mean(0) - ref.rgb_mean).sum()
    assert after < 0.25 * before
    # and beyond the mean: per-channel spread close to the reference's
    ref_std = np.sqrt(np.diag(ref.rgb_cov))
    assert np.abs(out[mask].astype(float).std(0) - ref_std).max() < 0.25 * ref_std.max()


def test_tone_curves_are_monotone():
    x = np.linspace(0, 1, 257)
    for seed in range(50):
        y = synthesis._tone_curve(np.random.default_rng(seed))(x)
        assert np.all(np.diff(y) >= -1e-9), seed


def test_strengths_spread_from_barely_visible_to_strong():
    real, mask, ref = _pair(32)
    mses, strengths = [], []
    for seed in range(120):
        out = synthesis.synthesize(
            real, mask, [ref], list(synthesis.METHODS), np.random.default_rng(seed), (10, 2500)
        )
        assert out is not None
        comp, method, mse, t = out
        assert method in synthesis.METHODS and 10 <= mse <= 2500 and 0 < t <= 1
        assert mse == pytest.approx(synthesis.fg_mse(comp, real, mask))
        mses.append(mse)
        strengths.append(t)
    mses, strengths = np.array(mses), np.array(strengths)
    assert (mses < 100).mean() >= 0.05  # near-harmonious composites exist ...
    assert (mses > 1000).mean() >= 0.05  # ... and strong ones
    assert strengths.min() < 0.3 and strengths.max() > 0.9
    # a strength blends linearly towards the real object
    full = synthesis.apply("retouch", real, mask, None, np.random.default_rng(1), 1.0).astype(float)
    half = synthesis.apply("retouch", real, mask, None, np.random.default_rng(1), 0.5).astype(float)
    assert np.abs(half - (real + 0.5 * (full - real))).max() <= 1.0


def _photos(folder, sizes):
    """Photos of several sizes and aspect ratios (cut from builtin photos), with polygon masks."""
    native = {}
    for i, (h, w) in enumerate(sizes):
        big = photo(i, 128)
        poly = polygon_mask(i, 128)
        img = images.resize_image(big, (w, h))
        m = images.resize_mask(poly > 0, (w, h))
        save(folder / "photos" / f"p{i:02d}.png", img)
        save(folder / "masks" / f"p{i:02d}.png", m.astype(np.uint8) * 255)
        native[f"p{i:02d}"] = (h, w)
    return native


def test_holdout_methods_only_in_test_and_test_keeps_native_size(tmp_path):
    sizes = [(60, 96), (30, 40), (96, 72), (40, 30), (50, 50), (36, 60)]
    native = _photos(tmp_path / "src", sizes)
    out = tmp_path / "out"
    manifest = run_prepare(
        out,
        f"prepare.sources=[{{kind: photos_masks, path: {tmp_path / 'src'}, subset: mix}}]",
        "prepare.image_size=24",
        "prepare.test_max_side=48",
        "prepare.composites_per_photo=8",
        "prepare.val_fraction=0.2",
        "prepare.test_fraction=0.5",
        "prepare.methods=[retouch, tone_curve]",
        "prepare.holdout_methods=[idt]",
    )
    rows = read_rows(manifest)
    card = json.loads((out / "card.json").read_text())
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert all(by_split.values())
    for split in ("train", "val"):
        assert {r["method"] for r in by_split[split]} <= {"retouch", "tone_curve"}
        for r in by_split[split]:
            assert png(r["real"]).shape == (24, 24, 3) == png(r["composite"]).shape
    assert "idt" in {r["method"] for r in by_split["test"]}
    for r in by_split["test"]:
        h, w = native[r["sample_id"].split("/")[1].rsplit("_", 1)[0]]
        want_w, want_h = images.fit_within(w, h, 48)
        real, comp, mask = png(r["real"]), png(r["composite"]), png(r["mask"])
        assert real.shape == comp.shape == (want_h, want_w, 3) and mask.shape == (want_h, want_w)
        assert (r["height"], r["width"]) == (want_h, want_w)
        assert np.array_equal(comp[mask == 0], real[mask == 0])
    # the card counts composites per split and method, and keeps image_size = the training size
    for split, split_rows in by_split.items():
        counts: dict[str, int] = {}
        for r in split_rows:
            counts[r["method"]] = counts.get(r["method"], 0) + 1
        assert card["methods"][split] == dict(sorted(counts.items()))
    assert card["image_size"] == 24 and card["test_max_side"] == 48
    assert card["sizes"]["train"] == {"height": [24, 24], "width": [24, 24]}
    test_h = [r["height"] for r in by_split["test"]]
    assert card["sizes"]["test"]["height"] == [min(test_h), max(test_h)]
    assert card["synthesis"]["holdout_methods"] == ["idt"]
    assert sum(card["strength_histogram"]["train"].values()) == len(by_split["train"])


def test_builtin_test_crops_native_size_capped(tmp_path):
    manifest = run_prepare(tmp_path, *SMALL, "prepare.test_max_side=40")
    rows = read_rows(manifest)
    test = [r for r in rows if r["split"] == "test"]
    assert test and all((r["height"], r["width"]) == (40, 40) for r in test)  # builtin crops are square
    assert all((r["height"], r["width"]) == (32, 32) for r in rows if r["split"] != "test")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prepare.holdout_methods=[idt, warp]", r"prepare\.holdout_methods: unknown \['warp'\]"),
        ("prepare.methods=[retouch, idt]", r"prepare\.holdout_methods: \['idt'\] also in prepare\.methods"),
        ("prepare.methods=[retouch, sepia]", r"prepare\.methods: unknown \['sepia'\]"),
        ("prepare.test_max_side=4", r"prepare\.test_max_side: 4 is too small"),
    ],
)
def test_bad_method_names_fail_clearly(tmp_path, override, message):
    params = load_params(REPO / "params.yaml", [f"storage.root={tmp_path}", override])
    with pytest.raises(UserError, match=message):
        prepare_dataset(params.prepare, Store.from_config(params.storage), progress=False)
    assert not (tmp_path / "datasets").exists()
