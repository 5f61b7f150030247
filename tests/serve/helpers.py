"""Test data and a tiny trained generator for the serve tests (evaluate / register / harmonize).

The recolouring is a photographic retouch of the object (per-channel gamma, gain and offset, then a
saturation change), the kind of composite the harmonizer must undo; the real photo is the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.images import batch_to_tensor, resize_image


def recolour(
    real: np.ndarray, mask: np.ndarray, rng: np.random.Generator, band: tuple[float, float] | None = None
) -> np.ndarray:
    """Retouch the masked pixels of ``real`` (uint8 HxWx3, bool mask); background copied untouched.

    With ``band``, redraw until the foreground MSE to the real lies in it (as prepare's rejection band).
    """
    for _ in range(50):
        out = _retouch(real, mask, rng)
        if band is None or band[0] <= fg_mse(out, real, mask) <= band[1]:
            return out
    raise AssertionError("no recolouring in the band after 50 draws")


def fg_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Hand-computed fMSE: squared difference over foreground pixels / (3 x foreground pixels)."""
    d = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    return float((d * d).sum() / (3 * mask.sum()))


def _retouch(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = real.astype(np.float32) / 255.0
    gamma = rng.uniform(0.6, 1.6, 3).astype(np.float32)
    gain = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    bias = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    y = np.clip(gain * x**gamma + bias, 0, 1)
    grey = y.mean(-1, keepdims=True)
    y = np.clip(grey + rng.uniform(0.6, 1.4) * (y - grey), 0, 1)
    out = real.copy()
    out[mask] = np.rint(y[mask] * 255.0).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# Test data from the builtin photos (no shared data needed)
# --------------------------------------------------------------------------------------------------

TEST_SUBSET = "Builtin"  # the iHarmony4-layout test subset written next to the photos
TRAIN_PHOTOS = 6  # the strong model trains on photo_ids[:6]; the test subset uses the others
SERVE_PHOTOS = 12  # the first dozen builtin photos (11 scenes: scikit-image, scikit-learn, matplotlib, kivy)


def write_builtin_photos(
    root: Path, crops: int = 2, size: int = 512, seed: int = 0, photos: int = SERVE_PHOTOS
) -> Path:
    """``root/photos/pNN.jpg`` + ``root/masks/pNN.png``: square crops of the first ``photos`` builtin
    photos (the ones prepare's ``builtin`` source uses) with an object mask each
    (``components.data.masks``). The same layout as the shared lalonde set, so every helper here reads
    both. ``pNN`` runs over photos first, then crops: the first dozen ids are a dozen different scenes. At 512 (upscaled where a crop is
    smaller) the photos keep detail for the full-resolution harmonize tests."""
    from components.data import masks, sources

    (root / "photos").mkdir(parents=True)
    (root / "masks").mkdir()
    names = list(sources.BUILTIN_PHOTOS)[:photos]
    for k in range(crops):
        for i, name in enumerate(names):
            img = sources.builtin_photo(name)
            h, w = img.shape[:2]
            rng = sources.rng_for(seed, "serve-tests", name, k)
            side = int(min(h, w) * (1.0 if k == 0 else 0.7))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = resize_image(np.ascontiguousarray(img[y : y + side, x : x + side]), size)
            mask = masks.object_mask(crop, rng, min_ratio=0.08, max_ratio=0.4)
            assert mask is not None, f"no object mask for builtin photo {name} crop {k}"
            pid = f"p{k * len(names) + i:02d}"
            Image.fromarray(crop).save(root / "photos" / f"{pid}.jpg", quality=95)
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(root / "masks" / f"{pid}.png")
    return root


def write_test_subset(root: Path, ids: list[str], per_photo: int = 1, size: int = 256, seed: int = 0) -> Path:
    """An iHarmony4-layout subset ``root/<TEST_SUBSET>`` of recoloured photos at ``size`` (``<id>_1_<k>.jpg``
    composites, ``<id>_1.png`` masks, ``<id>.jpg`` reals, ``<TEST_SUBSET>_test.txt``), as LHarmony is."""
    sub = root / TEST_SUBSET
    for d in ("composite_images", "masks", "real_images"):
        (sub / d).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for pid in ids:
        real, mask = load_photo(root, pid, size, resample=Image.LANCZOS)
        Image.fromarray(real).save(sub / "real_images" / f"{pid}.jpg", quality=95)
        real = np.asarray(Image.open(sub / "real_images" / f"{pid}.jpg"))  # the decoded file is the truth
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(sub / "masks" / f"{pid}_1.png")
        for k in range(1, per_photo + 1):
            name = f"{pid}_1_{k}.jpg"
            comp = recolour(real, mask, rng, band=(100.0, 2500.0))
            Image.fromarray(comp).save(sub / "composite_images" / name, quality=95)
            names.append(name)
    (sub / f"{TEST_SUBSET}_test.txt").write_text("\n".join(names) + "\n")
    return sub


def photo_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "photos").glob("*.jpg"))


def load_photo(root: Path, pid: str, size: int | None = None, resample=Image.BILINEAR):
    img = Image.open(root / "photos" / f"{pid}.jpg").convert("RGB")
    mask = Image.open(root / "masks" / f"{pid}.png").convert("L")
    if size:
        img, mask = img.resize((size, size), resample), mask.resize((size, size), Image.NEAREST)
    return np.asarray(img), np.asarray(mask) > 127


def training_set(root: Path, ids: list[str], size: int, per_photo: int, seed: int = 0):
    """(composites, masks, reals) uint8 arrays at ``size``: recoloured objects of the given photos."""
    rng = np.random.default_rng(seed)
    comps, masks, reals = [], [], []
    for pid in ids:
        real, mask = load_photo(root, pid, size)
        if mask.sum() < 4:
            continue
        for _ in range(per_photo):
            comps.append(recolour(real, mask, rng, band=(100.0, 2500.0)))
            masks.append(mask)
            reals.append(real)
    return np.stack(comps), np.stack(masks), np.stack(reals)


def train_tiny_generator(root: Path, ids: list[str], size: int = 32, steps: int = 300, seed: int = 0):
    """A small RainNet trained with L1 on recoloured photos: a real model, small enough for a test."""
    import torch

    from components.models.registry import build_model

    torch.manual_seed(seed)
    spec = {"name": "rainnet", "placement": "rain-decoder", "ngf": 8, "image_size": size}
    model = build_model(spec)
    comps, masks, reals = training_set(root, ids, size, per_photo=2, seed=seed)
    c = torch.from_numpy(comps).permute(0, 3, 1, 2).float() / 127.5 - 1
    r = torch.from_numpy(reals).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.from_numpy(masks).float()[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is ~10x faster than two on a busy 2-core box
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(c), (16,), generator=g)
            out = model(c[idx], m[idx])
            loss = (out - r[idx]).abs().sum() / (m[idx].sum() * 3 + 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), spec


class Oracle(torch.nn.Module):
    """A perfect "network" at ``size``: the real image there, pasted (isolates the upsampling method)."""

    def __init__(self, real: np.ndarray, size: int):
        super().__init__()
        low = resize_image(real, size)
        self.low = batch_to_tensor(low[None], np.ones((1, size, size), bool))[0]

    def forward(self, x, m, return_aux=False):
        out = self.low * m + x * (1 - m)
        return (out, {"transform": None}) if return_aux else out
