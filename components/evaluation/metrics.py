"""Harmonization metrics as the field reports them (RAINNET.md section 5), on uint8 images after rounding.

Conventions, fixed here so every stage and every table agrees:

- ``to_uint8``: ``round((x + 1) * 127.5)`` clipped to 0..255, computed in float64, rounding **half to
  even** (``numpy.rint`` / ``torch.round``; both round ``.5`` to the even neighbour). In [-1, 1] the only
  exact tie is x = 0 -> 127.5 -> 128, where half-up agrees. Never truncation: a value 0.999 of a level
  above ``k`` becomes ``k + 1``. Non-finite input is an error, not a black pixel.
- MSE: mean over H x W x 3 of the squared difference on 0..255 (sums are exact int64, ratios float64).
- PSNR: ``10 log10(255^2 / MSE)``, peak 255, capped at ``PSNR_CAP`` = 100 dB: MSE 0 (a perfect
  prediction) gives exactly 100, and any value above 100 is clipped to it, so the metric is finite and
  stays monotone in MSE (a 256x256 image with one channel of one pixel off by one level is 101.07 dB
  uncapped; with the cap it ties with the perfect one instead of beating it).
- fMSE: squared difference summed over the foreground / (3 x foreground pixels); fPSNR from fMSE the
  same way as PSNR. An **empty mask** has no foreground pixel that can be wrong: fMSE = 0.0 and
  fPSNR = ``PSNR_CAP``, and the image is flagged ``empty_fg`` (counted as ``n_empty_fg`` in summaries;
  it still counts in every mean, which stays a plain mean over images).
- Masks: (H, W) or (H, W, 1), bool, 0/1 (int or float) or 0..255. Per image: when its maximum is above
  1 the mask is on the 0..255 scale and foreground is ``>= 128``; otherwise foreground is ``>= 0.5``.
- Aggregation (``summarize``): plain (image-weighted) means, overall, per subset and per foreground
  ratio bin. ``fg_ratio`` is a fraction in [0, 1]; bins are half-open in percent, ``0-5`` = [0, 5),
  ``5-15`` = [5, 15), ``15-100`` = [15, 100] (the last one closed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# The [-1, 1] <-> uint8 conversions live in the image module; they are part of the metric contract,
# so they are re-exported here.
from components.data.images import from_uint8, images_to_uint8, to_uint8  # noqa: F401

PEAK = 255.0
PSNR_CAP = 100.0
METRICS = ("mse", "psnr", "fmse", "fpsnr")
# (label, lower, upper) as fractions; [lower, upper) except the last, which includes 1.0.
FG_BINS: tuple[tuple[str, float, float], ...] = (
    ("0-5", 0.0, 0.05),
    ("5-15", 0.05, 0.15),
    ("15-100", 0.15, 1.0),
)
# Bins of the unharmonized composite's own fMSE (0..255 scale): how far off the input already was. A
# harmonizer users can trust leaves a nearly harmonious composite (the first bin) nearly alone.
COMPOSITE_ERROR_BINS: tuple[tuple[str, float, float], ...] = (
    ("0-300", 0.0, 300.0),
    ("300-1000", 300.0, 1000.0),
    ("1000+", 1000.0, math.inf),
)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Per-image metrics
# --------------------------------------------------------------------------------------------------


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def foreground(mask) -> np.ndarray:
    """(N, H, W[, 1]) mask of any accepted encoding -> bool (N, H, W); the scale is decided per image."""
    m = _as_numpy(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise ValueError(f"mask: expected (N, H, W) or (N, H, W, 1), got shape {m.shape}")
    if m.dtype == np.bool_:
        return m
    if m.dtype == np.uint8:  # the common case (decoded masks): always within 0..255, no float copy
        peak = m.reshape(len(m), -1).max(axis=1, initial=0)
        return m >= np.where(peak > 1, 128, 1).astype(np.uint8)[:, None, None]  # >= 127.5 / >= 0.5
    if not np.issubdtype(m.dtype, np.number):
        raise TypeError(f"mask: expected bool or numeric values, got dtype {m.dtype}")
    m = m.astype(np.float64, copy=False)
    if not np.isfinite(m).all() or (m < 0).any() or (m > 255).any():
        raise ValueError("mask: values must be finite and within 0..255")
    peak = m.reshape(len(m), -1).max(axis=1, initial=0.0)
    threshold = np.where(peak > 1.0, 127.5, 0.5)[:, None, None]
    return m >= threshold


def psnr_from_mse(mse) -> np.ndarray:
    """``10 log10(255^2 / mse)`` with peak 255, capped at ``PSNR_CAP`` (also for mse == 0)."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        raw = 10.0 * np.log10(PEAK**2 / mse)
    return np.minimum(raw, PSNR_CAP)


def batch_metrics(pred, real, mask) -> dict[str, np.ndarray]:
    """Per-image metrics of a batch: uint8 (N, H, W, 3) pred and real (numpy or torch), mask (N, H, W).

    Returns float64 / int64 / bool numpy arrays of length N: ``mse``, ``psnr``, ``fmse``, ``fpsnr``,
    ``fg_ratio`` (fraction of foreground pixels), ``fg_pixels`` and ``empty_fg``.
    """
    p, r = _as_numpy(pred), _as_numpy(real)
    for name, a in (("pred", p), ("real", r)):
        if a.dtype != np.uint8:
            raise TypeError(f"{name}: metrics are defined on uint8 images (use to_uint8), got {a.dtype}")
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"{name}: expected (N, H, W, 3), got shape {a.shape}")
    if p.shape != r.shape:
        raise ValueError(f"pred and real differ in shape: {p.shape} vs {r.shape}")
    fg = foreground(mask)
    if fg.shape != p.shape[:3]:
        raise ValueError(f"mask shape {fg.shape} does not match the images {p.shape[:3]}")
    n, h, w = fg.shape
    # Exact integer arithmetic: a difference fits int16, a pixel's squared error (3 x 65025) int32, sums int64.
    diff = p.astype(np.int16) - r.astype(np.int16)
    sq = diff.astype(np.int32)
    sq_pix = np.einsum("nhwc,nhwc->nhw", sq, sq)
    sse = sq_pix.reshape(n, -1).sum(axis=1, dtype=np.int64)
    fg_pixels = np.count_nonzero(fg.reshape(n, -1), axis=1).astype(np.int64)
    fg_sse = (sq_pix * fg).reshape(n, -1).sum(axis=1, dtype=np.int64)
    mse = sse / float(h * w * 3)
    empty = fg_pixels == 0
    fmse = np.where(empty, 0.0, fg_sse / np.maximum(3 * fg_pixels, 1).astype(np.float64))
    return {
        "mse": mse,
        "psnr": psnr_from_mse(mse),
        "fmse": fmse,
        "fpsnr": psnr_from_mse(fmse),
        "fg_ratio": fg_pixels / float(h * w),
        "fg_pixels": fg_pixels,
        "empty_fg": empty,
    }


def image_metrics(pred, real, mask) -> dict[str, Any]:
    """One image: uint8 (H, W, 3) pred and real, mask (H, W). Plain Python values (see ``batch_metrics``)."""
    out = batch_metrics(_as_numpy(pred)[None], _as_numpy(real)[None], _as_numpy(mask)[None])
    return {k: v[0].item() for k, v in out.items()}


def rows_from_batch(result: Mapping[str, np.ndarray], **columns: Iterable[Any]) -> list[dict[str, Any]]:
    """``batch_metrics`` output plus per-image columns (``subset=[...]``, ``sample_id=[...]``) -> row dicts."""
    n = len(result["mse"])
    cols = {k: list(v) for k, v in columns.items()}
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"column {k!r} has {len(v)} values for {n} images")
    rows = []
    for i in range(n):
        row = {k: v[i] for k, v in cols.items()}
        row.update({k: np.asarray(v[i]).item() for k, v in result.items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def fg_bin(fg_ratio: float) -> str:
    """Foreground fraction -> bin label of ``FG_BINS`` (``0-5`` = [0, 5 %), ..., ``15-100`` = [15, 100 %])."""
    f = float(fg_ratio)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fg_ratio must be a fraction in [0, 1], got {fg_ratio!r}")
    for label, lo, hi in FG_BINS:
        if lo <= f < hi:
            return label
    return FG_BINS[-1][0]


def composite_error_bin(composite_fmse: float) -> str:
    """The composite's fMSE -> bin label of ``COMPOSITE_ERROR_BINS`` (``[lo, hi)``)."""
    v = float(composite_fmse)
    for label, lo, hi in COMPOSITE_ERROR_BINS:
        if lo <= v < hi:
            return label
    raise ValueError(f"composite fMSE must be a finite number >= 0, got {composite_fmse!r}")


def _group(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for key in METRICS:
        out[key] = float(np.mean([float(r[key]) for r in rows])) if rows else None
    out["n_empty_fg"] = sum(bool(r.get("empty_fg", False)) for r in rows)
    return out


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-image rows (``subset``, ``fg_ratio``, ``mse``, ``psnr``, ``fmse``, ``fpsnr``) -> summary tables.

    ``{"overall": {"n", "mse", "psnr", "fmse", "fpsnr", "n_empty_fg"}, "by_subset": {name: {...}},
    "by_fg_ratio": {"0-5": {...}, "5-15": {...}, "15-100": {...}}}``, plus ``"by_composite_error"``
    (bins ``0-300``, ``300-1000``, ``1000+`` of the unharmonized composite's fMSE) when the rows carry
    ``composite_fmse``, so the model and the composite are binned by the same images. Every mean is a plain mean over the
    images of the group (so ``overall`` is image-weighted, not a mean of subset means). Every bin is
    present; an empty group has ``n = 0`` and ``None`` metrics. Subsets are sorted by name.
    """
    rows = list(rows)
    missing = [k for k in ("subset", "fg_ratio", *METRICS) if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"summarize: rows lack column(s) {missing}")
    by_subset: dict[str, list] = {}
    by_bin: dict[str, list] = {label: [] for label, _, _ in FG_BINS}
    by_error: dict[str, list] = {label: [] for label, _, _ in COMPOSITE_ERROR_BINS}
    with_error = bool(rows) and all("composite_fmse" in r for r in rows)
    for r in rows:
        by_subset.setdefault(str(r["subset"]), []).append(r)
        by_bin[fg_bin(r["fg_ratio"])].append(r)
        if with_error:
            by_error[composite_error_bin(r["composite_fmse"])].append(r)
    out = {
        "overall": _group(rows),
        "by_subset": {s: _group(by_subset[s]) for s in sorted(by_subset)},
        "by_fg_ratio": {label: _group(v) for label, v in by_bin.items()},
    }
    if with_error:
        out["by_composite_error"] = {label: _group(v) for label, v in by_error.items()}
    return out


_BAD_NAME = re.compile(r"[^\w.\-/]+")


def metric_name(name: str) -> str:
    """Make a group name safe inside an MLflow metric name (letters, digits, ``_ . - /``)."""
    cleaned = _BAD_NAME.sub("_", str(name)).strip("./") or "_"
    return cleaned.replace("..", "_")


def flatten_summary(
    summary: Mapping[str, Any], prefix: str = "test", groups: bool = True
) -> dict[str, float]:
    """``summarize`` output -> flat MLflow metrics (docs/CONTRACTS.md "MLflow").

    ``{prefix}_mse`` ... ``{prefix}_fpsnr`` and ``{prefix}_n`` overall; with ``groups``, also
    ``{prefix}_fmse.<subset>`` and ``{prefix}_fmse.fg_0-5`` (every metric and ``n``). Empty groups
    (``None`` metrics) are left out: MLflow metrics must be numbers.
    """
    out: dict[str, float] = {}

    def add(group: Mapping[str, Any], suffix: str) -> None:
        for key in ("n", *METRICS):
            value = group.get(key)
            if value is not None and math.isfinite(float(value)):
                out[f"{prefix}_{key}{suffix}"] = float(value)

    add(summary["overall"], "")
    if groups:
        for name, group in summary.get("by_subset", {}).items():
            add(group, f".{metric_name(name)}")
        for label, group in summary.get("by_fg_ratio", {}).items():
            add(group, f".fg_{label}")
        for label, group in summary.get("by_composite_error", {}).items():
            add(group, f".err_{label.replace('+', '-inf')}")
    return out
