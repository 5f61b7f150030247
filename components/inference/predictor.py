"""The one ``Predictor``: composite + mask at any size -> harmonized image, for every path that uses a model.

``evaluate``, ``harmonize`` and the MLflow pyfunc model all call it, so a model scores and serves the same
way everywhere. The network runs at its training size (the composite brought there with the image
module's resize, as the training shards were); its result reaches the image's native resolution by
its head (RAINNET.md section 7):

* a colour-transform head (``affine``, ``pct``): the predicted transform map is upsampled (bilinear, a
  band of rows at a time to bound memory) and applied to the full-resolution composite;
* the ``image`` head: a per-image colour mapping (least squares, polynomial in RGB) is fitted from the
  low-resolution composite foreground to the network's output and applied at full resolution, so the
  foreground keeps its detail (``harmonize.mapping``; ``upsample`` stretches the output instead).

At the network's own size the network's output is used as it is. Either way the foreground is blended
in by the mask's alpha and background pixels are copied untouched (byte-identical).
``paper_protocol`` is the field's protocol instead: the network alone, at its size in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from components.data import images
from components.data.images import InputError

if TYPE_CHECKING:
    from components.storage import Store

MAPPINGS = ("poly2", "poly3", "affine", "upsample")
REDUCING_GAP = 3.0  # see Predictor.to_network_size
_CHUNK = 1 << 20  # pixels per chunk when applying a mapping or transform (bounds memory at 4K and beyond)


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
    if not images.foreground(mask).any():
        raise InputError(f"{name}: empty mask (no foreground pixel above 127)")
    return composite, mask


def area_fraction(mask: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each low-resolution pixel covered by foreground (box filter), float32 (size, size)."""
    m = Image.fromarray(images.foreground(mask).astype(np.float32), mode="F")
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

    def apply_levels(self, x, *_band):
        """The same on float32 levels (a torch (..., 3) band, as ``apply_in_bands`` gives) -> levels, unrounded."""
        import torch

        u = x.reshape(-1, 3).numpy() / np.float32(255.0)
        coef = self.coef.astype(np.float32)
        y = u + coef[0] if self.kind == "shift" else _features(u, self.kind) @ coef
        return torch.from_numpy(y * np.float32(255.0)).reshape(x.shape)


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


def upscale_to_full(
    composite: np.ndarray, mask: np.ndarray, low_comp: np.ndarray, low_out: np.ndarray, area: np.ndarray,
    mapping: str = "poly2",
) -> np.ndarray:  # fmt: skip
    """Carry a low-resolution harmonization (``low_comp`` -> ``low_out``) to the full-resolution composite."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; known: {list(MAPPINGS)}")
    h, w = composite.shape[:2]
    if mapping == "upsample":
        up = np.asarray(Image.fromarray(low_out).resize((w, h), Image.BILINEAR))
        return apply_in_bands(composite, mask, lambda x, r0, r1, c0, c1: _torch().from_numpy(up[r0:r1, c0:c1]))
    sel = fit_pixels(area)
    cmap = ColourMapping.fit(low_comp[sel], low_out[sel], kind=mapping)
    return apply_in_bands(composite, mask, cmap.apply_levels)


# --------------------------------------------------------------------------------------------------
# Colour changes at full resolution, a band of rows at a time
# --------------------------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def apply_in_bands(composite: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """A copy of ``composite`` whose foreground gets ``colour``, blended in by the mask's alpha.

    One pass over the mask's bounding box, a band of rows at a time (memory stays bounded at any size):
    ``colour(x, r0, r1, c0, c1)`` gets the band's pixels as float32 levels (rows, cols, 3) and returns
    the new colours as levels (unrounded; they are clamped to 0..255 and rounded here), and the result
    is ``composite + alpha * (new - composite)``, rounded. Pixels outside the box or
    with alpha 0 are copied untouched, so the background is byte-identical to the input.
    """
    import torch

    out = composite.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return out
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    r_lo, r_hi, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    per_band = max(1, _CHUNK // (c1 - c0))
    for r0 in range(r_lo, r_hi, per_band):
        r1 = min(r_hi, r0 + per_band)
        comp, alpha = composite[r0:r1, c0:c1], mask[r0:r1, c0:c1]
        x = torch.from_numpy(comp.astype(np.float32))
        new = colour(x, r0, r1, c0, c1).float().clamp_(0, 255).round_().to(torch.uint8).numpy()
        res = np.where(alpha[..., None] > 0, new, comp)  # alpha 255: the new colour; 0: the input
        soft = (alpha > 0) & (alpha < 255)
        if soft.any():  # the object's soft edge: composite + alpha * (new - composite), rounded
            c = comp[soft].astype(np.float32)
            a = alpha[soft].astype(np.float32)[:, None] / np.float32(255.0)
            res[soft] = np.clip(np.rint(c + a * (new[soft].astype(np.float32) - c)), 0, 255).astype(np.uint8)
        out[r0:r1, c0:c1] = res
    return out


def transform_levels(transform) -> tuple:
    """A transform map (1, 12, h, w) on [-1, 1] RGB as the same map on 0..255 levels: ``(dA, offset)``.

    ``out = x + dA x + b`` on ``x = u / 127.5 - 1`` is, on levels ``u``, ``new = u + dA (u - 127.5) +
    127.5 b``; the clamp to [-1, 1] is the clamp to 0..255. Raises ``ValueError`` on a non-finite map: the
    check is done here, once, on the network's small output, not over the full-resolution pixels.
    """
    import torch

    t = transform.detach().float().cpu()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("the network's colour transform has non-finite values (NaN or inf)")
    return t[:, :9], t[:, 9:12] * 127.5


def apply_transform_full(composite: np.ndarray, mask: np.ndarray, transform) -> np.ndarray:
    """Apply a network-resolution transform map (1, 12, h, w) to a full-resolution composite.

    Applied on uint8 levels in one pass over the foreground's bounding box, a band of rows at a time
    (``apply_in_bands``): a per-image map (``affine``, (1, 12, 1, 1)) is one 3x3 matrix product per pixel;
    a per-pixel map (``pct``) is upsampled bilinearly for the band only (``upsample_rows``).
    """
    import torch

    from components.models.heads import upsample_rows

    h, w = composite.shape[:2]
    da, offset = transform_levels(transform)
    if da.shape[-2:] == (1, 1):
        a = torch.eye(3) + da.reshape(3, 3)
        bias = (offset.reshape(3) + 127.5 * (1.0 - a.sum(dim=1))).contiguous()

        def colour(x, r0, r1, c0, c1):  # u + dA (u - 127.5) + 127.5 b  =  A u + (127.5 b + 127.5 (1 - A 1))
            return torch.addmm(bias, x.reshape(-1, 3), a.T).reshape(x.shape)

        return apply_in_bands(composite, mask, colour)
    full = torch.cat([da, offset], 1)

    def colour_map(x, r0, r1, c0, c1):
        p = upsample_rows(full, h, w, r0, r1)[0, :, :, c0:c1].permute(1, 2, 0)  # (rows, cols, 12)
        xc = x - 127.5
        d = torch.einsum("hwck,hwk->hwc", p[..., :9].reshape(*p.shape[:2], 3, 3), xc)
        return x + d + p[..., 9:12]

    return apply_in_bands(composite, mask, colour_map)


# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class NetworkOutput:
    """The network's result at its own size: uint8 images (N, S, S, 3) and, for a transform head, the map."""

    images: np.ndarray
    transforms: object | None  # torch.Tensor (N, 12, S, S) or (N, 12, 1, 1)


@dataclass
class Prepared:
    """A checked pair at native size (uint8 composite, 0..255 alpha) and at the network's (bool mask)."""

    composite: np.ndarray
    mask: np.ndarray
    low_comp: np.ndarray
    low_mask: np.ndarray


class Predictor:
    """``Predictor.from_uri("models:/rainnet@champion")(composite, mask)`` -> harmonized uint8 image.

    ``model`` is a generator (``forward(composite, mask, return_aux=True)``) built for ``image_size``;
    ``mapping`` is how an ``image`` head's result reaches full resolution (see the module doc).
    """

    def __init__(
        self,
        model,
        image_size: int,
        mapping: str = "poly2",
        max_pixels: int | None = None,
        device="auto",
        info: dict | None = None,
        batch_size: int = 16,
    ):
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {mapping!r}; known: {list(MAPPINGS)}")
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.mapping = mapping
        self.max_pixels = max_pixels
        self.batch_size = max(1, int(batch_size))
        self.info = info or {}
        self.head = getattr(getattr(model, "head", None), "head", "image")

    @classmethod
    def from_uri(
        cls, uri: str, device="auto", store: Store | None = None, image_size: int | None = None, **kwargs
    ) -> Predictor:
        """The one way a stage gets a predictor: the generator file at ``uri`` (a path, ``s3://`` through
        ``store``, ``runs:/<id>/model`` or ``models:/<name>@<alias>``), checked and loaded by
        ``components.tracking.model_files`` (MLflow URIs: hash first) and ``components.checkpoint``;
        ``CheckpointError`` when it is not a generator file or fails its hash."""
        from components.tracking.model_files import load_generator

        model, info = load_generator(uri, map_location="cpu", store=store)
        return cls.from_generator(model, info, device=device, image_size=image_size, **kwargs)

    @classmethod
    def from_generator(cls, model, info: dict, image_size: int | None = None, **kwargs) -> Predictor:
        """A loaded generator and its file's info (``spec``, ``image_size``, ``meta``): at its training
        size unless ``image_size``. The MLflow model's loader, which checks the file its own way, uses it."""
        return cls(model, int(image_size or info["image_size"]), info=dict(info), **kwargs)

    # -- the network at its own size --------------------------------------------------------------
    def network(self, composites: np.ndarray, masks: np.ndarray) -> NetworkOutput:
        """uint8 (N, S, S, 3) composites and (N, S, S) masks at the network's size -> ``NetworkOutput``,
        in batches of ``batch_size``."""
        import torch

        outs, transforms = [], []
        with torch.inference_mode():
            for s in range(0, len(composites), self.batch_size):
                x, m = images.batch_to_tensor(composites[s : s + self.batch_size], masks[s : s + self.batch_size],
                                              self.device)  # fmt: skip
                y, aux = self.model(x, m, return_aux=True)
                outs.append(images.images_to_uint8(y))
                t = aux.get("transform")
                transforms.append(None if t is None else t.float().cpu())
        t = None if transforms[0] is None else torch.cat(transforms)
        return NetworkOutput(np.concatenate(outs), t)

    def to_network_size(self, composite: np.ndarray, mask: np.ndarray, name: str = "input"):
        """(composite, bool mask) at the network's size, resized the way the training shards were."""
        s = self.image_size
        low_mask = images.resize_mask(mask, s)
        if not low_mask.any():
            # The object vanishes at the network's size: the network has nothing to act on.
            raise InputError(f"{name}: the mask is too small to be seen at the network's {s}x{s} input")
        # A large image is first box-reduced by an integer factor (PIL's reducing_gap 3: within a few
        # levels of plain Lanczos, 3x faster at 4096 -> 64; images under 6x the network's size are untouched).
        return images.resize_image(composite, s, reducing_gap=REDUCING_GAP), low_mask

    def prepare(self, composite: np.ndarray, mask: np.ndarray, name: str = "input") -> Prepared:
        """Check a pair and bring it to the network's size (``InputError`` naming ``name`` if it is bad)."""
        composite, mask = check_pair(composite, mask, name, self.max_pixels)
        return Prepared(composite, mask, *self.to_network_size(composite, mask, name))

    def paper_protocol(self, composite: np.ndarray, mask: np.ndarray, name: str = "input") -> np.ndarray:
        """The network alone at its size in and out -> uint8 (S, S, 3) (the scores of the field's protocol
        are ``components.evaluation.paper_protocol``'s)."""
        return self.predict_with_protocol(composite, mask, name)[1]

    # -- any size ------------------------------------------------------------------------------------
    def __call__(self, composite: np.ndarray, mask: np.ndarray, name: str = "input") -> np.ndarray:
        """uint8 (H, W, 3) composite + (H, W) mask (0..255 alpha, 0/1 or bool) -> uint8 (H, W, 3)."""
        return self.predict_with_protocol(composite, mask, name)[0]

    def predict_with_protocol(
        self, composite: np.ndarray, mask: np.ndarray, name: str = "input"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(harmonized at native size, the network's own output at its size) from one network pass."""
        return self.finish([self.prepare(composite, mask, name)])[0]

    harmonize = __call__

    def finish(self, prepared: Sequence[Prepared]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Prepared pairs of any sizes -> (harmonized at native size, network output) for each.

        Every pair meets the network at its own size, so pairs of any sizes share a batch; each result is
        then carried to its own image's resolution.
        """
        if not prepared:
            return []
        net = self.network(np.stack([p.low_comp for p in prepared]), np.stack([p.low_mask for p in prepared]))
        return [self._full_size(p, net, i) for i, p in enumerate(prepared)]

    def _full_size(self, p: Prepared, net: NetworkOutput, i: int) -> tuple[np.ndarray, np.ndarray]:
        low_out = net.images[i]
        s = self.image_size
        if p.composite.shape[:2] == (s, s):  # the network's own output, blended in by the mask's alpha
            colour = lambda x, r0, r1, c0, c1: _torch().from_numpy(low_out[r0:r1, c0:c1])  # noqa: E731
            return apply_in_bands(p.composite, p.mask, colour), low_out
        if net.transforms is not None:
            return apply_transform_full(p.composite, p.mask, net.transforms[i : i + 1]), low_out
        area = area_fraction(p.mask, s)
        return upscale_to_full(p.composite, p.mask, p.low_comp, low_out, area, self.mapping), low_out

    def predict_batch(
        self, composites: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Many pairs, each at its own size (what the pyfunc model serves); the network runs on batches."""
        if len(composites) != len(masks):
            raise InputError(f"{len(composites)} composites but {len(masks)} masks")
        prepared = [self.prepare(c, m, name=f"image {i}") for i, (c, m) in enumerate(zip(composites, masks, strict=True))]
        return [out for out, _ in self.finish(prepared)]

    def harmonize_files(self, composite_uri: str, mask_uri: str, store: Store | None = None) -> np.ndarray:
        """Read a (composite, mask) pair (through ``store``, a ``components.storage.Store``) and harmonize
        it; errors name the offending file."""
        return self(*self.read_pair(composite_uri, mask_uri, store), name=composite_uri)

    def read_pair(self, composite_uri: str, mask_uri: str, store: Store | None = None):
        """(composite uint8, mask alpha) read through ``store``; ``InputError`` naming the file if bad."""
        comp = images.read_image(composite_uri, self.max_pixels, store)
        mask = images.read_mask(mask_uri, self.max_pixels, store, soft=True)
        if mask.shape != comp.shape[:2]:
            raise InputError(
                f"{mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]} but the composite {composite_uri} "
                f"is {comp.shape[1]}x{comp.shape[0]}"
            )
        return comp, mask
