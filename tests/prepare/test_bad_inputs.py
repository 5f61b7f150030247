"""Every kind of bad input: converted or skipped, counted in the card by reason, named in a log line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.cli import run_cli
from components.errors import UserError
from pipeline.prepare import main

from .conftest import REPO, good_photos_masks, photo, polygon_mask, read_rows, run_prepare, save

SMALL = ["prepare.image_size=32", "prepare.composites_per_photo=1"]


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_bad_folder(root: Path) -> dict[str, str]:
    """A photos_masks folder with 4 good pairs and one file per bad-input case; returns file -> outcome."""
    good_photos_masks(root, 4)
    p, m = root / "photos", root / "masks"
    (p / "unreadable.jpg").write_bytes(b"this is not an image")
    save(m / "unreadable.png", polygon_mask(1))
    data = _jpeg(photo(5))
    (p / "truncated.jpg").write_bytes(data[: len(data) // 2])
    save(m / "truncated.png", polygon_mask(2))
    save(p / "mismatch.jpg", photo(6))
    save(m / "mismatch.png", polygon_mask(3, size=40))
    save(p / "empty.jpg", photo(7))
    save(m / "empty.png", np.zeros((80, 80), np.uint8))
    save(p / "full.jpg", photo(8))
    save(m / "full.png", np.full((80, 80), 255, np.uint8))
    save(p / "soft.jpg", photo(9))  # anti-aliased mask: binarized at 50 %, kept
    soft = polygon_mask(4).astype(np.float64)
    soft = (soft * 0.5 + np.roll(soft, 2, axis=1) * 0.5).astype(np.uint8)
    save(m / "soft.png", soft)
    save(p / "gray.png", photo(10).mean(axis=2).astype(np.uint8))  # grayscale: converted, kept
    save(m / "gray.png", polygon_mask(5))
    rgba = np.concatenate([photo(11), np.full((80, 80, 1), 255, np.uint8)], axis=2)
    save(p / "rgba.png", rgba)  # RGBA: alpha dropped, kept
    save(m / "rgba.png", polygon_mask(6))
    deep = (photo(12).mean(axis=2) * 257).astype(np.uint16)
    save(p / "deep16.png", deep)  # 16-bit: scaled to 8 bits, kept
    save(m / "deep16.png", polygon_mask(7))
    save(p / "nomask.jpg", photo(13))  # no mask: skipped
    save(m / "orphan.png", polygon_mask(8))  # no photo: skipped
    return {
        "unreadable.jpg": "unreadable",
        "truncated.jpg": "unreadable",
        "mismatch.png": "mask_size_mismatch",
        "empty.png": "mask_empty",
        "full.png": "mask_full",
        "nomask.jpg": "missing_mask",
        "orphan.png": "missing_photo",
    }


def test_bad_photos_masks_inputs(tmp_path, caplog):
    expected = make_bad_folder(tmp_path / "src")
    caplog.set_level(logging.INFO, logger="prepare")
    manifest = run_prepare(
        tmp_path / "out", *SMALL, f"prepare.sources=[{{kind: photos_masks, path: {tmp_path / 'src'}}}]"
    )
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["skipped"] == {
        "missing_mask": 1, "missing_photo": 1, "mask_empty": 1, "mask_full": 1,
        "mask_size_mismatch": 1, "unreadable": 2,
    }  # fmt: skip
    assert card["converted"] == {
        "converted_16bit": 1, "converted_grayscale": 1, "converted_rgba": 1, "mask_binarized": 1,
    }  # fmt: skip
    listed = [f"{i['input']} {i['detail']}: {i['reason']}" for i in card["skipped_inputs"]]
    for name, reason in expected.items():  # the card names each skipped input, the log sums them up
        assert any(name in line and line.endswith(reason) for line in listed), (name, reason, listed)
    summary = [line for line in caplog.text.splitlines() if "skipped 7 inputs" in line]
    assert len(summary) == 1 and "unreadable" in summary[0], caplog.text
    kept = {r["scene_id"].split("/")[1] for r in read_rows(manifest)}
    assert kept == {"good00", "good01", "good02", "good03", "soft", "gray", "rgba", "deep16"}
    for r in read_rows(manifest):  # converted photos: grey stays grey in the real image
        if r["scene_id"].endswith(("gray", "deep16")):
            real = np.asarray(Image.open(io.BytesIO(r["real"])))
            assert real.shape == (32, 32, 3) and np.array_equal(real[..., 0], real[..., 2])


def test_bad_iharmony4_inputs(tmp_path, caplog):
    sub = tmp_path / "src" / "HTest"
    for i in range(3):
        real = photo(i)
        mask = polygon_mask(i)
        comp = real.copy()
        comp[mask > 0] = (comp[mask > 0] * 0.6).astype(np.uint8)
        save(sub / "composite_images" / f"r{i}_1_1.jpg", comp)
        if i != 1:
            save(sub / "masks" / f"r{i}_1.png", mask)
        if i != 2:
            save(sub / "real_images" / f"r{i}.jpg", real)
    (sub / "HTest_test.txt").write_text("r0_1_1.jpg\nr1_1_1.jpg\nr2_1_1.jpg\n")
    caplog.set_level(logging.INFO, logger="prepare")
    manifest = run_prepare(
        tmp_path / "out", *SMALL, f"prepare.sources=[{{kind: iharmony4, path: {sub.parent}}}]"
    )
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["skipped"] == {"missing_mask": 1, "missing_real": 1}
    listed = {(Path(i["input"]).name, i["reason"]) for i in card["skipped_inputs"]}
    assert {("r2_1_1.jpg", "missing_real"), ("r1_1_1.jpg", "missing_mask")} <= listed, listed
    assert "skipped 2 inputs (expected: 1 missing_mask, 1 missing_real)" in caplog.text
    rows = read_rows(manifest)
    assert [(r["sample_id"], r["split"], r["subset"]) for r in rows] == [("HTest/r0_1_1", "test", "HTest")]


def test_nothing_usable_fails_clearly_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "photos").mkdir(parents=True)
    (src / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    save(src / "masks" / "broken.png", polygon_mask(0))
    save(src / "photos" / "blank.jpg", photo(0))
    save(src / "masks" / "blank.png", np.zeros((80, 80), np.uint8))
    store = tmp_path / "store"
    argv = [
        "--params", str(REPO / "params.yaml"), "--no-progress",
        "-S", f"storage.root={store}", "-S", f"prepare.card={tmp_path / 'card.json'}",
        "-S", f"prepare.manifest={tmp_path / 'm.json'}", "-S", f"prepare.samples_png={tmp_path / 's.png'}",
        "-S", f"prepare.sources=[{{kind: photos_masks, path: {src}}}]",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nothing usable" in err and "unreadable" in err and "mask_empty" in err
    assert not store.exists() or not list(store.rglob("*.parquet*"))
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "card.json").exists()


def test_missing_source_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does-not-exist"):
        run_prepare(
            tmp_path, f"prepare.sources=[{{kind: photos_masks, path: {tmp_path / 'does-not-exist'}}}]"
        )
