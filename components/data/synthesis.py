"""Composite synthesis like iHarmony4: recolour the object of a real photo; the real photo is the target.

Only masked pixels change. Each composite picks a method at random (recorded on its row): Lab mean/std
transfer and RGB mean/covariance transfer from another photo's object, per-channel histogram matching to
that object, or a photographic retouch (exposure, gamma, white balance, contrast, saturation). A
composite whose foreground MSE falls outside the rejection band is redrawn, a few times at most.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from skimage.color import lab2rgb, rgb2lab

METHODS = ("lab_transfer", "rgb_transfer", "histogram", "retouch")
NEEDS_REFERENCE = {"lab_transfer", "rgb_transfer", "histogram"}
_QUANTILES = np.linspace(0.0, 1.0, 129)


@dataclass
class ObjectStats:
    """Colour statistics of one photo's object: what a transfer takes from a reference."""

    scene_id: str
    lab_mean: np.ndarray
    lab_std: np.ndarray
    rgb_mean: np.ndarray
    rgb_cov: np.ndarray
    quantiles: np.ndarray  # (3, 129) per-channel RGB quantiles, 0..255


def object_stats(image: np.ndarray, mask: np.ndarray, scene_id: str) -> ObjectStats:
    fg = image[mask].astype(np.float64)
    lab = rgb2lab(fg[None] / 255.0)[0]
    return ObjectStats(
        scene_id=scene_id,
        lab_mean=lab.mean(0),
        lab_std=lab.std(0) + 1e-3,
        rgb_mean=fg.mean(0),
        rgb_cov=np.cov(fg.T) + np.eye(3) * 1e-2 if len(fg) > 1 else np.eye(3),
        quantiles=np.quantile(fg, _QUANTILES, axis=0).T,
    )


def _sqrtm(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 1e-8, None))) @ v.T


def lab_transfer(fg: np.ndarray, ref: ObjectStats, rng: np.random.Generator) -> np.ndarray:
    lab = rgb2lab(fg[None] / 255.0)[0]
    out = (lab - lab.mean(0)) / (lab.std(0) + 1e-3) * ref.lab_std + ref.lab_mean
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        return lab2rgb(out[None])[0] * 255.0


def rgb_transfer(fg: np.ndarray, ref: ObjectStats, rng: np.random.Generator) -> np.ndarray:
    """Monge-Kantorovich linear map between the two colour Gaussians (Pitie & Kokaram 2007)."""
    mu = fg.mean(0)
    cov = np.cov(fg.T) + np.eye(3) * 1e-2 if len(fg) > 1 else np.eye(3)
    s_half = _sqrtm(cov)
    s_inv = np.linalg.inv(s_half)
    a = s_inv @ _sqrtm(s_half @ ref.rgb_cov @ s_half) @ s_inv
    return (fg - mu) @ a.T + ref.rgb_mean


def histogram(fg: np.ndarray, ref: ObjectStats, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(fg)
    n = len(fg)
    for c in range(3):
        order = np.argsort(fg[:, c], kind="stable")
        ranks = np.empty(n)
        ranks[order] = (np.arange(n) + 0.5) / n
        out[:, c] = np.interp(ranks, _QUANTILES, ref.quantiles[c])
    return out


def retouch(fg: np.ndarray, ref: ObjectStats | None, rng: np.random.Generator) -> np.ndarray:
    x = fg / 255.0
    x = x * 2.0 ** rng.uniform(-0.8, 0.8)  # exposure, in stops
    x = x * rng.uniform(0.8, 1.2, 3)  # white balance gains
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4)  # gamma
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.4) + mean  # contrast
    grey = (x @ np.array([0.299, 0.587, 0.114]))[:, None]
    x = grey + (x - grey) * rng.uniform(0.4, 1.6)  # saturation
    return x * 255.0


_FUNCS = {
    "lab_transfer": lab_transfer,
    "rgb_transfer": rgb_transfer,
    "histogram": histogram,
    "retouch": retouch,
}


def fg_mse(composite: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Foreground MSE on 0..255: squared error summed over the object / (3 x object pixels)."""
    d = composite[mask].astype(np.float64) - real[mask].astype(np.float64)
    return float((d * d).mean()) if d.size else 0.0


def apply(method: str, real: np.ndarray, mask: np.ndarray, ref, rng) -> np.ndarray:
    """Recolour the masked pixels of ``real`` with ``method``; the background is copied untouched."""
    fg = real[mask].astype(np.float64)
    new = _FUNCS[method](fg, ref, rng)
    out = real.copy()
    out[mask] = np.clip(np.round(new), 0, 255).astype(np.uint8)
    return out


def synthesize(
    real: np.ndarray,
    mask: np.ndarray,
    references: list[ObjectStats],
    methods: list[str],
    rng: np.random.Generator,
    mse_band: tuple[float, float],
    attempts: int = 10,
) -> tuple[np.ndarray, str, float] | None:
    """One composite in the rejection band: ``(composite, method, fg_mse)``, or None after ``attempts``.

    The method is drawn once and kept for most attempts (other references / parameters), so the
    method mix follows ``methods`` rather than whichever method passes the band most easily.
    """
    usable = [m for m in methods if m not in NEEDS_REFERENCE or references]
    if not usable:
        return None
    first = usable[int(rng.integers(len(usable)))]
    for attempt in range(attempts):
        method = first if attempt < attempts * 2 // 3 else usable[int(rng.integers(len(usable)))]
        ref = references[int(rng.integers(len(references)))] if method in NEEDS_REFERENCE else None
        comp = apply(method, real, mask, ref, rng)
        mse = fg_mse(comp, real, mask)
        if mse_band[0] <= mse <= mse_band[1]:
            return comp, method, mse
    return None
