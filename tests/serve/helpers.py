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


def photo_ids(lalonde: Path) -> list[str]:
    return sorted(p.stem for p in (lalonde / "photos").glob("*.jpg"))


def load_photo(lalonde: Path, pid: str, size: int | None = None, resample=Image.BILINEAR):
    img = Image.open(lalonde / "photos" / f"{pid}.jpg").convert("RGB")
    mask = Image.open(lalonde / "masks" / f"{pid}.png").convert("L")
    if size:
        img, mask = img.resize((size, size), resample), mask.resize((size, size), Image.NEAREST)
    return np.asarray(img), np.asarray(mask) > 127


def training_set(lalonde: Path, ids: list[str], size: int, per_photo: int, seed: int = 0):
    """(composites, masks, reals) uint8 arrays at ``size``: recoloured objects of the given photos."""
    rng = np.random.default_rng(seed)
    comps, masks, reals = [], [], []
    for pid in ids:
        real, mask = load_photo(lalonde, pid, size)
        if mask.sum() < 4:
            continue
        for _ in range(per_photo):
            comps.append(recolour(real, mask, rng, band=(100.0, 2500.0)))
            masks.append(mask)
            reals.append(real)
    return np.stack(comps), np.stack(masks), np.stack(reals)


def train_tiny_generator(lalonde: Path, ids: list[str], size: int = 32, steps: int = 300, seed: int = 0):
    """A small RainNet trained with L1 on recoloured photos: a real model, small enough for a test."""
    import torch

    from components.models.registry import build_model

    torch.manual_seed(seed)
    spec = {"name": "rainnet", "placement": "rain-decoder", "ngf": 8, "image_size": size}
    model = build_model(spec)
    comps, masks, reals = training_set(lalonde, ids, size, per_photo=2, seed=seed)
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
