"""Decode, convert and validate user images and masks, so that bad input is handled the same everywhere.

Every conversion a user would expect (grayscale/RGBA/16-bit -> 8-bit RGB, a soft mask -> binary at 50 %)
is applied and reported as a *note*; anything unusable raises :class:`BadInput` with a reason code that
the dataset card counts.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


class BadInput(Exception):
    """An input file that cannot be used; ``reason`` is a short code counted in the dataset card."""

    def __init__(self, reason: str, name: str, detail: str = ""):
        self.reason, self.name, self.detail = reason, name, detail
        super().__init__(f"{name}: {reason}" + (f" ({detail})" if detail else ""))


def _open(data: bytes, name: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except Exception as exc:  # PIL raises many types for corrupt / truncated data
        raise BadInput("unreadable", name, f"{type(exc).__name__}: {exc}") from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)


def decode_image(data: bytes, name: str, notes: list[tuple[str, str]]) -> np.ndarray:
    """Bytes -> uint8 (H, W, 3). Grayscale, palette, RGBA, CMYK and 16-bit inputs are converted (noted)."""
    im = _open(data, name)
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(("converted_16bit", name))
        arr = _to_uint8(np.asarray(im))
        return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
    if mode in ("L", "1", "LA"):
        notes.append(("converted_grayscale", name))
        arr = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append(("converted_rgba", name))  # alpha dropped: the colour is what we harmonize
        return np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., :3].copy()
    notes.append((f"converted_{mode.lower().replace(';', '')}", name))
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_mask(data: bytes, name: str, notes: list[tuple[str, str]]) -> np.ndarray:
    """Bytes -> bool (H, W). Colour/16-bit masks are converted, non-binary ones binarized at 50 %."""
    im = _open(data, name)
    if im.mode == "1":
        arr = np.asarray(im, dtype=bool)
        return _check_coverage(arr, name)
    if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
        notes.append(("mask_converted_to_gray", name))
        im = im.convert("L")
    arr = _to_uint8(np.asarray(im))
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.max(initial=0) <= 1:  # a 0/1 label image: binary already, just a different scale
        out = arr > 0
    else:
        if not np.isin(values, (0, 255)).all():
            notes.append(("mask_binarized", name))
        out = arr >= 128
    return _check_coverage(out, name)


def _check_coverage(mask: np.ndarray, name: str) -> np.ndarray:
    if not mask.any():
        raise BadInput("mask_empty", name)
    if mask.all():
        raise BadInput("mask_full", name)
    return mask


def check_same_size(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise BadInput(
            "mask_size_mismatch",
            mask_name,
            f"mask {mask.shape[1]}x{mask.shape[0]} vs image {image_name} {image.shape[1]}x{image.shape[0]}",
        )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize to the training size (antialiased); a no-op when already that size."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize, so the mask stays binary."""
    if mask.shape[:2] == (size, size):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(im) >= 128


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless, metadata-free PNG (same array -> same bytes): the background must stay exact."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    # Level 0 (stored deflate): decodes ~2x faster in the reader; the shard's zstd does the compressing.
    Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)
