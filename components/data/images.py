"""The one image module: decode, convert, validate, resize, encode, and [-1, 1] <-> uint8.

``prepare``, training, ``evaluate``, ``harmonize`` and the MLflow model all go through these functions, so
an image is read and resized the same way when a dataset is made and when a model is scored or served.
Every conversion a user would expect (grayscale/RGBA/16-bit -> 8-bit RGB, a soft mask -> binary at 50 %)
is applied and reported as a *note*; anything unusable raises :class:`BadInput` with a reason code that
the dataset card counts and a message that names the file.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

if TYPE_CHECKING:
    from components.storage import Store

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


class InputError(ValueError):
    """An image or mask that cannot be used; the message names the file and the problem."""


# What a reason code means, for the one-line error a user reads.
_REASONS = {
    "unreadable": "cannot read as an image",
    "too_large": "image too large",
    "mask_empty": "empty mask (no foreground pixel)",
    "mask_full": "full mask (every pixel is foreground: no background to harmonize against)",
    "mask_size_mismatch": "mask and image differ in size",
    "wrong_size": "image size is not the dataset's",
    "wrong_mode": "unexpected image mode",
}


class BadInput(InputError):
    """An input file that cannot be used; ``reason`` is a short code counted in the dataset card."""

    def __init__(self, reason: str, name: str, detail: str = ""):
        self.reason, self.name, self.detail = reason, name, detail
        text = _REASONS.get(reason, reason)
        super().__init__(f"{name}: {text} [{reason}]" + (f" ({detail})" if detail else ""))


def _open(
    data: bytes,
    name: str,
    max_pixels: int | None = None,
    size: tuple[int, int] | None = None,
    modes: tuple[str, ...] | None = None,
    formats: tuple[str, ...] | None = None,
    load: bool = True,
) -> Image.Image:
    """Open and decode, after checking what the header says (pixels, ``size`` (width, height), mode)
    so that an oversized or unexpected image is refused before a pixel is decompressed."""
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise BadInput("too_large", name, f"{w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
        if size is not None and (w, h) != tuple(size):
            raise BadInput("wrong_size", name, f"{w}x{h}, expected {size[0]}x{size[1]}")
        if modes is not None and im.mode not in modes:
            raise BadInput("wrong_mode", name, f"mode {im.mode}, expected {' or '.join(modes)}")
        if load:
            im.load()
        return im
    except BadInput:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, when it is below ours
        raise BadInput("too_large", name, str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt / truncated data
        raise BadInput("unreadable", name, f"{type(exc).__name__}: {exc}") from None


def decode_stored(data: object, name: str, size: tuple[int, int], mode: str, load: bool = True) -> np.ndarray | None:
    """A PNG the project stored itself (a shard's image), trusted for nothing: it must be a PNG of
    exactly ``size`` (width, height) in ``mode`` (``RGB`` or ``L``), all read from its header before a
    pixel is decompressed, so a decompression bomb or an oversized image costs nothing.
    ``load=False`` checks the header only (``None`` back)."""
    if not isinstance(data, bytes):
        raise BadInput("unreadable", name, f"expected PNG bytes, got {type(data).__name__}")
    im = _open(data, name, size[0] * size[1], size, (mode,), ("PNG",), load=load)
    return np.asarray(im) if load else None


def _to_uint8(arr: np.ndarray, top: float | None = None) -> np.ndarray:
    """To 8 bits; ``top`` is the input's full scale (65535 for 16-bit files), else guessed from the values."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    if top is None:
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)


def decode_image(
    data: bytes, name: str, notes: list[tuple[str, str]] | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Bytes -> uint8 (H, W, 3). Grayscale, palette, RGBA, CMYK and 16-bit inputs are converted (noted)."""
    notes = [] if notes is None else notes
    im = _open(data, name, max_pixels)
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(("converted_16bit", name))
        arr = _to_uint8(np.asarray(im), 65535.0 if mode.startswith("I;16") else None)
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


def decode_mask(
    data: bytes,
    name: str,
    notes: list[tuple[str, str]] | None = None,
    max_pixels: int | None = None,
    soft: bool = False,
) -> np.ndarray:
    """Bytes -> bool (H, W). Colour/16-bit masks are converted, non-binary ones binarized at 50 %.

    ``soft=True`` (serving) keeps a soft mask as uint8 alpha 0..255 instead (a 0/1 label image becomes
    0/255); the foreground is still what is >= 50 %, and it must be neither empty nor the whole image.
    """
    notes = [] if notes is None else notes
    im = _open(data, name, max_pixels)
    if im.mode == "1":
        arr = np.asarray(im, dtype=bool)
        _check_coverage(arr, name)
        return arr.astype(np.uint8) * 255 if soft else arr
    if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
        notes.append(("mask_converted_to_gray", name))
        im = im.convert("L")
    arr = _to_uint8(np.asarray(im))
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.max(initial=0) <= 1:  # a 0/1 label image: binary already, just a different scale
        arr = arr * np.uint8(255)
    elif not np.isin(values, (0, 255)).all():
        notes.append(("mask_binarized", name))
    _check_coverage(arr >= 128, name)
    return arr if soft else arr >= 128


def _check_coverage(mask: np.ndarray, name: str) -> np.ndarray:
    if not mask.any():
        raise BadInput("mask_empty", name)
    if mask.all():
        raise BadInput("mask_full", name)
    return mask


def read_image(uri: str, max_pixels: int | None = None, store: Store | None = None) -> np.ndarray:
    """A local path or ``s3://`` URI -> uint8 (H, W, 3); any failure is an ``InputError`` naming the file."""
    return decode_image(read_file_bytes(uri, store), uri, max_pixels=max_pixels)


def read_mask(uri: str, max_pixels: int | None = None, store: Store | None = None, soft: bool = True) -> np.ndarray:
    """A mask file -> uint8 alpha (H, W) 0..255 (``soft``) or bool; errors name the file."""
    return decode_mask(read_file_bytes(uri, store), uri, max_pixels=max_pixels, soft=soft)


def read_file_bytes(uri: str, store: Store | None = None) -> bytes:
    """A local path or ``s3://`` URI's bytes through a ``components.storage.Store`` (default ``Store()``);
    a failure is an ``InputError`` naming the file."""
    from components.storage import Store

    try:
        return (store or Store()).read_bytes(uri)
    except OSError as exc:
        raise InputError(f"{uri}: cannot read file ({exc})") from None


def check_same_size(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise BadInput(
            "mask_size_mismatch",
            mask_name,
            f"mask {mask.shape[1]}x{mask.shape[0]} vs image {image_name} {image.shape[1]}x{image.shape[0]}",
        )


def resize_image(image: np.ndarray, size: int | tuple[int, int], reducing_gap: float | None = None) -> np.ndarray:
    """Resize to ``size`` (square side, or (width, height)), antialiased (Lanczos); a no-op at that size.

    The one image resize: the training shards are made with it, and evaluation and serving bring an
    image to the network's size with it, so the network sees what it was trained on. ``reducing_gap``
    (PIL's: a box reduction by an integer factor first, then Lanczos over at least that factor) makes
    a large reduction several times faster; it changes nothing below ``2 * reducing_gap`` times.
    """
    w, h = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.LANCZOS, reducing_gap=reducing_gap), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool or 0..255 mask -> bool (foreground >= 50 %)."""
    w, h = (size, size) if isinstance(size, int) else size
    fg = mask if mask.dtype == bool else mask >= 128
    if fg.shape[:2] == (h, w):
        return fg
    im = Image.fromarray(fg.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    return np.asarray(im) >= 128


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect ratio kept, so the longer side is at most ``max_side``."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


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


def encode_image(img: np.ndarray, path: str) -> bytes:
    """Encode by the output's extension (PNG by default, JPEG at quality 95)."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else "png"
    buf = io.BytesIO()
    if ext in ("jpg", "jpeg"):
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    elif ext == "png":
        Image.fromarray(img).save(buf, format="PNG")
    else:
        raise InputError(f"{path}: unsupported output format .{ext} (use .png or .jpg)")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The network's value range: [-1, 1] <-> uint8
# --------------------------------------------------------------------------------------------------


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def to_uint8(x):
    """Network range [-1, 1] -> uint8 0..255 by rounding (half to even), clipped; same shape and kind.

    A torch tensor gives a torch uint8 tensor on the same device, anything else a numpy array.
    Non-finite input is an error, never a black pixel.
    """
    if _is_torch(x):
        import torch

        y = (x.detach().to(torch.float64) + 1.0) * 127.5
        if not bool(torch.isfinite(y).all()):
            raise ValueError("to_uint8: input has non-finite values (NaN or inf)")
        return torch.round(y).clamp_(0, 255).to(torch.uint8)
    y = (np.asarray(x, dtype=np.float64) + 1.0) * 127.5
    if not np.isfinite(y).all():
        raise ValueError("to_uint8: input has non-finite values (NaN or inf)")
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def from_uint8(x):
    """uint8 0..255 -> float32 in [-1, 1] (``x * (1 / 127.5) - 1`` in float32), the inverse of ``to_uint8`` on
    levels. The one scaling of the project: shards for training, batches for inference; a numpy result
    is a new C-contiguous array (channel-first views in, contiguous arrays out)."""
    if _is_torch(x):
        import torch

        return x.to(torch.float32) * (1 / 127.5) - 1.0
    y = np.array(x, dtype=np.float32, order="C")  # always a copy: scaled in place below
    y *= 1 / 127.5
    y -= 1.0
    return y


def foreground(mask: np.ndarray) -> np.ndarray:
    """The one mask threshold: foreground where a 0..255 mask is at least 128 (50 %), as bool."""
    return np.asarray(mask) >= 128


def images_to_uint8(x) -> np.ndarray:
    """Network batch (B, 3, H, W) in [-1, 1] (tensor or array) -> numpy uint8 (B, H, W, 3)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images_to_uint8: expected (B, 3, H, W), got shape {tuple(x.shape)}")
    y = to_uint8(x)
    y = y.cpu().numpy() if _is_torch(y) else y
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


def batch_to_tensor(images: np.ndarray, masks: np.ndarray, device=None):
    """uint8 (N, H, W, 3) images and (N, H, W) bool or 0..255 masks -> network tensors.

    Images (N, 3, H, W) float32 in [-1, 1]; masks (N, 1, H, W) float32 0/1 (foreground >= 50 %).
    """
    import torch

    x = from_uint8(torch.from_numpy(np.ascontiguousarray(images)).to(device)).permute(0, 3, 1, 2)
    m = np.asarray(masks)
    m = m if m.dtype == bool else foreground(m)
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(m)).to(device).float()[:, None]
