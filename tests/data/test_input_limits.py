"""prepare's guards on inputs: a photo over ``prepare.max_pixels`` and broken symlinks are skipped and
counted in the dataset card like every other bad input, never a traceback or gigabytes of memory."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.prepare.conftest import good_photos_masks, polygon_mask, read_rows, run_prepare, save


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (what a 12000x12000 photo's header says); its
    pixel data is a token: only a decoder that checks the size before allocating gets it right."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the header is the point
def test_over_the_pixel_limit_and_broken_symlinks_are_skipped_and_counted(tmp_path):
    src = good_photos_masks(tmp_path / "src", 4)
    photos, masks = src / "photos", src / "masks"
    (photos / "huge.png").write_bytes(huge_png_header(12000, 12000))
    with Image.open(photos / "huge.png") as im:
        assert im.size == (12000, 12000)
    save(masks / "huge.png", polygon_mask(9))
    (photos / "ghost.jpg").symlink_to(photos / "deleted.jpg")  # dangling
    (photos / "loop_a.jpg").symlink_to(photos / "loop_b.jpg")  # a loop
    (photos / "loop_b.jpg").symlink_to(photos / "loop_a.jpg")
    (masks / "gone.png").symlink_to(tmp_path / "nowhere" / "gone.png")

    manifest = run_prepare(
        tmp_path / "out", "prepare.image_size=32", "prepare.composites_per_photo=1",
        f"prepare.sources=[{{kind: photos_masks, path: {src}}}]",
    )  # fmt: skip
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["skipped"] == {"dangling_symlink": 2, "symlink_loop": 2, "too_large": 1}
    kept = {r["scene_id"].split("/")[1] for r in read_rows(manifest)}
    assert kept == {"good00", "good01", "good02", "good03"}


def test_the_pixel_limit_is_a_param(tmp_path):
    src = good_photos_masks(tmp_path / "src", 4)
    save(src / "photos" / "wide.png", np.zeros((60, 200, 3), np.uint8) + 90)  # 12,000 pixels
    save(src / "masks" / "wide.png", np.pad(np.full((20, 40), 255, np.uint8), ((20, 20), (80, 80))))
    run_prepare(
        tmp_path / "out", "prepare.image_size=32", "prepare.composites_per_photo=1", "prepare.max_pixels=10000",
        f"prepare.sources=[{{kind: photos_masks, path: {src}}}]",
    )  # fmt: skip
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["skipped"] == {"too_large": 1}  # the 80x80 photos (6,400 pixels) pass
