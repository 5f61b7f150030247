"""Composite synthesis like iHarmony4: recolour the object of a real photo; the real photo is the target.

Only masked pixels change. Each composite picks a method at random (recorded on its row), covering
iHarmony4's range: from another photo's object, Lab mean/std transfer, RGB mean/covariance transfer,
per-channel histogram matching and iterative distribution transfer (``idt``, Pitie et al. 2005: random
3-D rotations + 1-D quantile matching of each rotated axis); or a photographic retouch, either
exposure / white balance / gamma / contrast / saturation (``retouch``) or random monotone tone curves
(``tone_curve``: S-curves, gamma, control-point curves, global or per channel). The recoloured object is
then blended with the real one at a random strength ``t`` in (0, 1] (``real + t (recoloured - real)``),
so composites range from barely visible to strong. A composite whose foreground MSE falls outside the
rejection band is redrawn, a few times at most. Everything is deterministic given the generator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from skimage.color import lab2rgb, rgb2lab

METHODS = ("lab_transfer", "rgb_transfer", "histogram", "idt", "retouch", "tone_curve")
NEEDS_REFERENCE = {"lab_transfer", "rgb_transfer", "histogram", "idt"}
_QUANTILES = np.linspace(0.0, 1.0, 129)
REF_PIXELS = 2048  # reference object pixels kept for idt (a deterministic subsample)
IDT_ITERATIONS = (4, 10)  # idt: number of random rotations, drawn in this range (inclusive)
STRENGTH_POWER = 0.7  # strength t = u ** 0.7, u uniform in (0, 1]: median ~0.62, P(t < 0.2) ~0.10


@dataclass
class ObjectStats:
    """Colour statistics of one photo's object: what a transfer takes from a reference."""

    scene_id: str
    lab_mean: np.ndarray
    lab_std: np.ndarray
    rgb_mean: np.ndarray
    rgb_cov: np.ndarray
    quantiles: np.ndarray  # (3, 129) per-channel RGB quantiles, 0..255
    pixels: np.ndarray  # (<= REF_PIXELS, 3) uint8 RGB subsample of the object (for idt)


def object_stats(
    image: np.ndarray, mask: np.ndarray, scene_id: str, rng: np.random.Generator | None = None
) -> ObjectStats:
    """Statistics of the masked object; ``rng`` picks the pixel subsample (the first pixels without one)."""
    fg8 = image[mask]
    fg = fg8.astype(np.float64)
    lab = rgb2lab(fg[None] / 255.0)[0]
    if len(fg8) > REF_PIXELS:
        keep = (
            np.sort(rng.choice(len(fg8), size=REF_PIXELS, replace=False))
            if rng is not None
            else np.linspace(0, len(fg8) - 1, REF_PIXELS).astype(np.int64)
        )
        fg8 = fg8[keep]
    return ObjectStats(
        scene_id=scene_id,
        lab_mean=lab.mean(0),
        lab_std=lab.std(0) + 1e-3,
        rgb_mean=fg.mean(0),
        rgb_cov=np.cov(fg.T) + np.eye(3) * 1e-2 if len(fg) > 1 else np.eye(3),
        quantiles=np.quantile(fg, _QUANTILES, axis=0).T,
        pixels=np.ascontiguousarray(fg8, dtype=np.uint8),
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
    for c in range(3):
        out[:, c] = _match_1d(fg[:, c], ref.quantiles[c])
    return out


def _match_1d(x: np.ndarray, ref_quantiles: np.ndarray) -> np.ndarray:
    """Quantile mapping of the values ``x`` onto a distribution given by its quantiles at ``_QUANTILES``."""
    n = len(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = (np.arange(n) + 0.5) / n
    return np.interp(ranks, _QUANTILES, ref_quantiles)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def idt(fg: np.ndarray, ref: ObjectStats, rng: np.random.Generator) -> np.ndarray:
    """Iterative distribution transfer (Pitie, Kokaram & Dahyot 2005) towards the reference object's
    RGB distribution: rotate both colour clouds at random, match each rotated axis's 1-D distribution
    to the reference's, rotate back; a few iterations move the whole 3-D distribution."""
    x = fg.copy()
    y = ref.pixels.astype(np.float64)
    lo, hi = IDT_ITERATIONS
    for _ in range(int(rng.integers(lo, hi + 1))):
        rot = _rotation(rng)
        xr, yr = x @ rot, y @ rot
        yq = np.quantile(yr, _QUANTILES, axis=0)  # (129, 3)
        for c in range(3):
            xr[:, c] = _match_1d(xr[:, c], yq[:, c])
        x = xr @ rot.T
    return x


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


def _tone_curve(rng: np.random.Generator):
    """One random monotone curve on [0, 1]: control points (black / white level, Dirichlet-spaced
    steps through a PCHIP spline), then a gamma, then an S-curve (or inverse S)."""
    k = int(rng.integers(2, 6))
    alpha = float(np.exp(rng.uniform(np.log(1.5), np.log(40.0))))  # small: far from the identity
    lo, hi = rng.uniform(0.0, 0.08), rng.uniform(0.92, 1.0)
    ys = lo + (hi - lo) * np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(k, alpha)))])
    spline = PchipInterpolator(np.linspace(0.0, 1.0, k + 1), ys)  # monotone through monotone points
    gamma = 2.0 ** rng.uniform(-0.7, 0.7)
    s = rng.uniform(-0.6, 0.9)  # x - s sin(2 pi x) / (2 pi) is increasing for |s| < 1

    def curve(x: np.ndarray) -> np.ndarray:
        x = np.clip(spline(np.clip(x, 0.0, 1.0)), 0.0, 1.0) ** gamma
        return x - s * np.sin(2 * np.pi * x) / (2 * np.pi)

    return curve


def tone_curve(fg: np.ndarray, ref: ObjectStats | None, rng: np.random.Generator) -> np.ndarray:
    """Retouch with tone curves: one global curve, or one per channel (a colour cast), each random."""
    x = fg / 255.0
    if rng.random() < 0.5:
        x = _tone_curve(rng)(x)
    else:
        x = np.stack([_tone_curve(rng)(x[:, c]) for c in range(3)], axis=1)
    return x * 255.0


_FUNCS = {
    "lab_transfer": lab_transfer,
    "rgb_transfer": rgb_transfer,
    "histogram": histogram,
    "idt": idt,
    "retouch": retouch,
    "tone_curve": tone_curve,
}


def fg_mse(composite: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Foreground MSE on 0..255: squared error summed over the object / (3 x object pixels)."""
    d = composite[mask].astype(np.float64) - real[mask].astype(np.float64)
    return float((d * d).mean()) if d.size else 0.0


def draw_strength(rng: np.random.Generator) -> float:
    """A blend strength in (0, 1]: ``u ** STRENGTH_POWER`` with ``u`` uniform in (0, 1]."""
    return float((1.0 - rng.random()) ** STRENGTH_POWER)


def apply(method: str, real: np.ndarray, mask: np.ndarray, ref, rng, strength: float = 1.0) -> np.ndarray:
    """Recolour the masked pixels of ``real`` with ``method``, blended with the real object at
    ``strength`` (1: the method's full effect); the background is copied untouched."""
    fg = real[mask].astype(np.float64)
    new = np.clip(_FUNCS[method](fg, ref, rng), 0, 255)
    if strength != 1.0:  # a blend of two valid images: the real object and its full recolouring
        new = fg + strength * (new - fg)
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
) -> tuple[np.ndarray, str, float, float] | None:
    """One composite in the rejection band: ``(composite, method, fg_mse, strength)``, or None after
    ``attempts``.

    The method is drawn once and kept for most attempts (other references / parameters / strengths),
    so the method mix follows ``methods`` rather than whichever method passes the band most easily.
    """
    usable = [m for m in methods if m not in NEEDS_REFERENCE or references]
    if not usable:
        return None
    first = usable[int(rng.integers(len(usable)))]
    for attempt in range(attempts):
        method = first if attempt < attempts * 2 // 3 else usable[int(rng.integers(len(usable)))]
        ref = references[int(rng.integers(len(references)))] if method in NEEDS_REFERENCE else None
        strength = draw_strength(rng)
        comp = apply(method, real, mask, ref, rng, strength)
        mse = fg_mse(comp, real, mask)
        if mse_band[0] <= mse <= mse_band[1]:
            return comp, method, mse, strength
    return None
