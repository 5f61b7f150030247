"""Fit the strength of a transform head's correction on the val split, once training has ended.

A network trained on fMSE answers an unseen scene with a cautious correction, and averaging members and
mirror images (ensemble.py) makes it more cautious still: the average of several noisy transforms is
closer to the identity than each. One scalar ``s`` (``A = I + s dA``, ``b = s b``), chosen on the val
split among ``STRENGTHS``, undoes that (lalonde, 3 members with their mirrors: s = 1.15, val 0.486 ->
0.477 of the composite's fMSE). It is the same kind of choice as keeping the best val epoch, made once;
the test split is never looked at. The transforms are computed once and every strength is scored from
them, with the metric validation reports (``metrics.batch_metrics`` on uint8 images).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from components.evaluation import metrics as M
from components.models.heads import apply_transform
from components.models.rainnet import paste_back

STRENGTHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(21))  # 0.5 .. 1.5


def fit_strength(
    model: torch.nn.Module, batches: Iterable[dict], device="cpu", strengths: tuple[float, ...] = STRENGTHS
) -> tuple[float, dict[float, float]]:
    """``(best strength, {strength: val fMSE})`` of ``model`` (built with strength 1) over ``batches``.

    Ties go to the strength nearest 1 (the model as trained). ``ValueError`` for an ``image`` head.
    """
    from components.training.engine import to_device

    if getattr(model.head, "head", "image") == "image":
        raise ValueError("strength calibration needs a colour-transform head (affine or pct)")
    totals = dict.fromkeys(strengths, 0.0)
    count = 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            comp, mask, real = to_device(batch, device)
            _, aux = model(comp, mask, return_aux=True)
            transform = aux["transform"].float()
            real_u8, mask_np = M.images_to_uint8(real), mask[:, 0].cpu().numpy()
            for s in strengths:
                out = paste_back(apply_transform(transform * s, comp), comp, mask)
                totals[s] += float(np.sum(M.batch_metrics(M.images_to_uint8(out), real_u8, mask_np)["fmse"]))
            count += len(comp)
    if not count:
        raise ValueError("strength calibration got no validation images")
    table = {s: v / count for s, v in totals.items()}
    best = min(strengths, key=lambda s: (round(table[s], 6), abs(s - 1.0)))
    return best, table
