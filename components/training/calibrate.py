"""Fit how much of a transform head's correction to apply, on the val split, once training has ended.

A network trained on fMSE answers an unseen scene with a cautious correction, and averaging members and
mirror images (ensemble.py) makes it more cautious still: the average of several noisy transforms is
closer to the identity than each. One scalar ``s`` (``A = I + s dA``, ``b = s b``) undoes that (lalonde,
3 members with their mirrors: s = 1.15, val 0.486 -> 0.477 of the composite's fMSE).

The same network also nudges composites that are already nearly right, and on those (the unharmonized
composite's fMSE under 300) any nudge is a large share of a small error: seed 0 of the default recipe
made that group 1.38x worse on val while it cut the rest to 0.69x. A dead zone ``tau`` (``DeadZone``:
the transform shrunk by ``tau`` towards the identity) leaves them alone. With ``low_bin_max`` set, the
pair ``(s, tau)`` is the one with the lowest val fMSE among those that keep that group's val fMSE within
``low_bin_max`` of the composite's; without it, or when no pair does, the lowest val fMSE (a warning
says so). Both are the same kind of choice as keeping the best val epoch, made once; the test split is
never looked at. The transforms are computed once and every pair is scored from them, with the metric
validation reports (``metrics.batch_metrics`` on uint8 images).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from components.evaluation import metrics as M
from components.models.ensemble import shrink
from components.models.heads import apply_transform
from components.models.rainnet import paste_back

log = logging.getLogger(__name__)
STRENGTHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(21))  # 0.5 .. 1.5
DEADZONES = tuple(round(0.02 * i, 2) for i in range(9))  # 0 .. 0.16 (transform norms are ~0.1-0.5)
LOW_BIN = M.COMPOSITE_ERROR_BINS[0]  # ("0-300", 0, 300): composites that are already nearly right


@dataclass(frozen=True)
class Calibration:
    """The fitted pair and what it scores on val (fMSE, and the low bin's fMSE over the composite's)."""

    strength: float
    deadzone: float
    val_fmse: float
    low_bin_ratio: float | None  # None: no val composite in the low bin
    as_trained_fmse: float  # strength 1, no dead zone
    as_trained_low_bin_ratio: float | None
    constrained: bool  # low_bin_max was asked for and met


def fit_correction(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device="cpu",
    low_bin_max: float | None = None,
    strengths: tuple[float, ...] = STRENGTHS,
    deadzones: tuple[float, ...] = DEADZONES,
) -> Calibration:
    """The ``(strength, deadzone)`` of ``model`` (built with strength 1 and no dead zone) fitted on
    ``batches`` (module doc). Without ``low_bin_max`` only the strength is fitted (dead zone 0).

    Ties go to the pair nearest the model as trained (strength 1, dead zone 0). ``ValueError`` for an
    ``image`` head or no images.
    """
    from components.training.engine import to_device

    if getattr(model.head, "head", "image") == "image":
        raise ValueError("calibration needs a colour-transform head (affine or pct)")
    zones = deadzones if low_bin_max is not None else (0.0,)
    grid = [(s, z) for s in strengths for z in zones]
    per_image: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
    composite: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            comp, mask, real = to_device(batch, device)
            _, aux = model(comp, mask, return_aux=True)
            transform = aux["transform"].float()
            real_u8, mask_np = M.images_to_uint8(real), mask[:, 0].cpu().numpy()
            composite.append(M.batch_metrics(M.images_to_uint8(comp), real_u8, mask_np)["fmse"])
            for s, z in grid:
                out = paste_back(apply_transform(shrink(transform * s, z), comp), comp, mask)
                per_image[(s, z)].append(M.batch_metrics(M.images_to_uint8(out), real_u8, mask_np)["fmse"])
    if not composite:
        raise ValueError("calibration got no validation images")
    comp_fmse = np.concatenate(composite)
    low = (comp_fmse >= LOW_BIN[1]) & (comp_fmse < LOW_BIN[2])
    fmse = {g: np.concatenate(v) for g, v in per_image.items()}
    mean = {g: float(v.mean()) for g, v in fmse.items()}
    low_ratio = {g: (float(v[low].mean() / max(comp_fmse[low].mean(), 1e-12)) if low.any() else None)
                 for g, v in fmse.items()}  # fmt: skip

    def key(g):  # the lowest val fMSE; ties: the pair nearest the model as trained
        return (round(mean[g], 6), abs(g[0] - 1.0), g[1])

    feasible = [g for g in grid if low_bin_max is None or low_ratio[g] is None or low_ratio[g] <= low_bin_max]
    if not feasible:
        log.warning(
            "no strength and dead zone keep the val composites under fMSE %g within %.2fx of their own "
            "error (best %.2fx); shipping the lowest val fMSE", LOW_BIN[2], low_bin_max, min(low_ratio.values()),
        )  # fmt: skip
    best = min(feasible or grid, key=key)
    plain = (1.0, 0.0)
    return Calibration(
        strength=best[0], deadzone=best[1], val_fmse=mean[best], low_bin_ratio=low_ratio[best],
        as_trained_fmse=mean[plain], as_trained_low_bin_ratio=low_ratio[plain],
        constrained=low_bin_max is not None and bool(feasible),
    )  # fmt: skip
