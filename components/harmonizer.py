"""Full-resolution harmonization: the network runs at its training size, a colour mapping carries it up.

Upsampling the network's low-resolution output blurs the foreground (a 256x256 prediction stretched over
a 4K object). Instead we fit, per image, a colour transform from the low-resolution composite foreground
to the network's low-resolution output (least squares, polynomial in RGB), apply that transform to every
full-resolution foreground pixel, and paste with the full-resolution mask. The foreground keeps all of its
detail, only its colours change, and background pixels are copied untouched (pixel-identical).
``benchmarks/bench_harmonize.py`` measures the methods against each other (fMSE and sharpness).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

MAPPINGS = ("poly2", "poly3", "affine", "upsample")
_CHUNK = 1 << 20  # pixels per chunk when applying the mapping (bounds memory at 4K and beyond)


class InputError(ValueError):
    """A composite or mask that cannot be harmonized; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# Reading and checking inputs
# --------------------------------------------------------------------------------------------------


def decode_image(data: bytes, name: str, mode: str, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes -> uint8 array (H, W, 3) for ``RGB`` or (H, W) for ``L``; errors name ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise InputError(
                    f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                    "(harmonize.max_pixels)"
                )
            return np.asarray(im.convert(mode))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name}: cannot read as an image ({exc.__class__.__name__}: {exc})") from None


def read_image(uri: str, mode: str = "RGB", max_pixels: int | None = None, s3=None) -> np.ndarray:
    """Read a local path or ``s3://`` URI as uint8; any failure is an ``InputError`` naming the file."""
    from components import storage

    try:
        data = storage.read_bytes(uri, s3)
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"{uri}: cannot read file ({exc})") from None
    return decode_image(data, uri, mode, max_pixels)


def check_pair(
    composite: np.ndarray, mask: np.ndarray, name: str = "input", max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (composite, mask) pair; return (uint8 HxWx3, uint8 HxW alpha in 0..255)."""
    composite = np.asarray(composite)
    mask = np.asarray(mask)
    if composite.ndim != 3 or composite.shape[2] != 3 or composite.dtype != np.uint8:
        raise InputError(
            f"{name}: composite must be uint8 (H, W, 3), got {composite.dtype} {composite.shape}"
        )
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise InputError(f"{name}: mask must be (H, W), got shape {mask.shape}")
    h, w = composite.shape[:2]
    if mask.shape != (h, w):
        raise InputError(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the composite is {w}x{h} (width x height)"
        )
    if max_pixels is not None and h * w > max_pixels:
        raise InputError(f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    if mask.dtype == bool or (mask.max(initial=0) <= 1 and mask.dtype != np.float32):
        mask = mask.astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        mask = np.clip(np.rint(np.asarray(mask, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    if not (mask > 127).any():
        raise InputError(f"{name}: empty mask (no foreground pixel above 127)")
    return composite, mask


# --------------------------------------------------------------------------------------------------
# Resizing (the field's protocol: images bilinear with antialiasing, masks nearest)
# --------------------------------------------------------------------------------------------------


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 0..255 mask, binarized (>127): what the network is given."""
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return np.where(mask > 127, 255, 0).astype(np.uint8)


def area_fraction(mask: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each low-resolution pixel covered by foreground (box filter), float32 (size, size)."""
    m = Image.fromarray((mask > 127).astype(np.float32), mode="F")
    return np.asarray(m.resize((size, size), Image.BOX), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# The colour mapping
# --------------------------------------------------------------------------------------------------


def _features(rgb: np.ndarray, kind: str) -> np.ndarray:
    """(N, 3) floats in [0, 1] -> (N, P) polynomial features, constant term last."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    cols = [r, g, b]
    if kind in ("poly2", "poly3"):
        cols += [r * r, g * g, b * b, r * g, r * b, g * b]
    if kind == "poly3":
        cols += [r * r * r, g * g * g, b * b * b, r * g * b, r * r * g, r * r * b, g * g * r, g * g * b]
        cols += [b * b * r, b * b * g]
    cols.append(np.ones_like(r))
    return np.concatenate(cols, axis=1)


_N_FEATURES = {"affine": 4, "poly2": 10, "poly3": 20, "shift": 1}


@dataclass
class ColourMapping:
    """A per-image colour transform ``out = features(rgb) @ coef`` on [0, 1] RGB."""

    kind: str
    coef: np.ndarray  # (P, 3)

    @classmethod
    def fit(cls, src: np.ndarray, dst: np.ndarray, kind: str = "poly2", ridge: float = 1e-3) -> ColourMapping:
        """Least squares from ``src`` to ``dst`` (both (N, 3) uint8 or [0, 1] floats).

        Falls back to a lower degree when there are too few pixels to pin the higher one down, and is
        regularised (ridge) towards the identity so that rare colours are not thrown far off.
        """
        src = _as_unit(src)
        dst = _as_unit(dst)
        n = len(src)
        order = ["poly3", "poly2", "affine", "shift"]
        order = order[order.index(kind) :]
        kind = next((k for k in order if n >= 4 * _N_FEATURES[k]), "shift")
        if kind == "shift":
            coef = np.zeros((1, 3), np.float64)
            coef[0] = (dst - src).mean(axis=0) if n else 0.0
            return cls("shift", coef)
        x = _features(src.astype(np.float64), kind)
        ident = np.zeros((x.shape[1], 3))
        ident[0, 0] = ident[1, 1] = ident[2, 2] = 1.0
        lam = ridge * n
        a = x.T @ x + lam * np.eye(x.shape[1])
        coef = np.linalg.solve(a, x.T @ dst.astype(np.float64) + lam * ident)
        return cls(kind, coef)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 3) uint8 -> (N, 3) uint8, rounded and clipped; processed in chunks to bound memory."""
        out = np.empty_like(rgb, dtype=np.uint8)
        coef = self.coef.astype(np.float32)
        for s in range(0, len(rgb), _CHUNK):
            x = _as_unit(rgb[s : s + _CHUNK])
            y = x + coef[0] if self.kind == "shift" else _features(x, self.kind) @ coef
            out[s : s + _CHUNK] = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
        return out


def _as_unit(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def fit_pixels(area: np.ndarray, min_pixels: int = 32) -> np.ndarray:
    """Boolean (size, size): low-res pixels fully inside the foreground (no background colour mixed in).

    Thin objects have few such pixels; then pixels mostly inside (>= 50 %) are used as well.
    """
    inside = area >= 0.999
    if inside.sum() < min_pixels:
        inside = area >= 0.5
    if inside.sum() == 0:
        inside = area > 0
    return inside


def paste(composite: np.ndarray, mask: np.ndarray, new_fg: np.ndarray, fg_index: np.ndarray) -> np.ndarray:
    """Blend ``new_fg`` (colours of the pixels ``fg_index``) into a copy of the composite by the mask alpha.

    Pixels with mask 0 are never written, so the background is pixel-identical to the input.
    """
    out = composite.copy()
    flat_out = out.reshape(-1, 3)
    flat_comp = composite.reshape(-1, 3)
    alpha = mask.reshape(-1)
    for s in range(0, len(fg_index), _CHUNK):
        idx = fg_index[s : s + _CHUNK]
        a = alpha[idx].astype(np.float32)[:, None] / 255.0
        c = flat_comp[idx].astype(np.float32)
        v = c + a * (new_fg[s : s + _CHUNK].astype(np.float32) - c)
        flat_out[idx] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


def upscale_to_full(
    composite: np.ndarray, mask: np.ndarray, low_comp: np.ndarray, low_out: np.ndarray, area: np.ndarray,
    mapping: str = "poly2",
) -> np.ndarray:  # fmt: skip
    """Carry a low-resolution harmonization (``low_comp`` -> ``low_out``) to the full-resolution composite."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; known: {list(MAPPINGS)}")
    fg_index = np.flatnonzero(mask.reshape(-1) > 0)
    h, w = composite.shape[:2]
    if mapping == "upsample":
        up = np.asarray(Image.fromarray(low_out).resize((w, h), Image.BILINEAR))
        return paste(composite, mask, up.reshape(-1, 3)[fg_index], fg_index)
    sel = fit_pixels(area)
    cmap = ColourMapping.fit(low_comp[sel], low_out[sel], kind=mapping)
    new_fg = cmap.apply(composite.reshape(-1, 3)[fg_index])
    return paste(composite, mask, new_fg, fg_index)


# --------------------------------------------------------------------------------------------------
# The harmonizer
# --------------------------------------------------------------------------------------------------

# (composites uint8 (N, S, S, 3), masks uint8 (N, S, S) 0/255) -> uint8 (N, S, S, 3)
LowResFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def network_fn(model, device="auto") -> LowResFn:
    """Wrap a generator (``forward(composite, mask)`` in [-1, 1]) as a uint8 batch function."""
    import torch

    from components.metrics import images_to_uint8

    dev = pick_device(device) if isinstance(device, str) else device
    model = model.to(dev).eval()

    @torch.inference_mode()
    def run(comps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        x = (
            torch.from_numpy(np.array(comps, dtype=np.uint8)).to(dev).permute(0, 3, 1, 2).float() / 127.5
            - 1.0
        )
        m = (torch.from_numpy(np.array(masks, dtype=np.uint8)).to(dev) > 127).float()[:, None]
        y = model(x, m)
        return images_to_uint8(y)

    return run


class Harmonizer:
    """Harmonize composites of any size: ``Harmonizer.from_uri("models:/rainnet@champion")(img, mask)``.

    ``low_res`` is the network at its training size (``image_size``) as a uint8 batch function;
    ``mapping`` picks how its result reaches full resolution (``poly2`` default, see module doc).
    """

    def __init__(
        self,
        low_res: LowResFn,
        image_size: int,
        mapping: str = "poly2",
        max_pixels: int | None = None,
        info: dict | None = None,
    ):
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {mapping!r}; known: {list(MAPPINGS)}")
        self.low_res = low_res
        self.image_size = int(image_size)
        self.mapping = mapping
        self.max_pixels = max_pixels
        self.info = info or {}

    @classmethod
    def from_model(cls, model, image_size: int, device="auto", **kwargs) -> Harmonizer:
        return cls(network_fn(model, device), image_size, **kwargs)

    @classmethod
    def from_uri(cls, uri: str, device="auto", **kwargs) -> Harmonizer:
        """Load a generator from a file, ``s3://``, ``runs:/<id>/model`` or ``models:/<name>@<alias>``."""
        from components.checkpoint import load_generator

        model, info = load_generator(uri, map_location="cpu")
        return cls(network_fn(model, device), int(info["image_size"]), info=dict(info), **kwargs)

    def __call__(self, composite: np.ndarray, mask: np.ndarray, name: str = "input") -> np.ndarray:
        """uint8 (H, W, 3) composite + (H, W) mask (0/255, or bool) -> uint8 (H, W, 3) harmonized."""
        composite, mask = check_pair(composite, mask, name, self.max_pixels)
        s = self.image_size
        low_comp = resize_rgb(composite, s)
        low_mask = resize_mask(mask, s)
        area = area_fraction(mask, s)
        if not low_mask.any():
            # The object vanishes at the network's size: the network has nothing to act on.
            raise InputError(f"{name}: the mask is too small to be seen at the network's {s}x{s} input")
        low_out = self.low_res(low_comp[None], low_mask[None])[0]
        return upscale_to_full(composite, mask, low_comp, low_out, area, self.mapping)

    harmonize = __call__

    def harmonize_files(self, composite_uri: str, mask_uri: str, s3=None) -> np.ndarray:
        """Read a (composite, mask) pair and harmonize it; errors name the offending file."""
        comp = read_image(composite_uri, "RGB", self.max_pixels, s3)
        mask = read_image(mask_uri, "L", self.max_pixels, s3)
        if mask.shape != comp.shape[:2]:
            raise InputError(
                f"{mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]} but the composite {composite_uri} "
                f"is {comp.shape[1]}x{comp.shape[0]}"
            )
        if not (mask > 127).any():
            raise InputError(f"{mask_uri}: empty mask (no foreground pixel above 127)")
        return self(comp, mask, name=composite_uri)


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
