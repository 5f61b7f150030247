"""Output heads: what a generator predicts from its last feature map (RAINNET.md section 7).

* ``image`` (the paper): an RGB image through tanh, the background pasted back.
* ``pct``: a 3x4 affine colour transform per pixel (the PCT-Net idea), predicted at the network's size;
  the map is upsampled and applied to the composite at any resolution.
* ``affine``: one 3x4 colour transform per image, the foreground-weighted mean of the same per-pixel map.

A transform acts on colours only, so the detail of the full-resolution composite survives, and it starts
as the identity: the generator's last layer is zero-initialised (``zero_init`` is honoured by
``init_weights``), so an untrained model returns its input. Transforms work on [-1, 1] RGB:
``out = A @ rgb + b`` with ``A = I + dA``, clamped to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("image", "affine", "pct")
TRANSFORM_CHANNELS = 12  # 9 for dA (row-major 3x3), 3 for b


def head_channels(head: str) -> int:
    """Channels the generator's last layer must produce for ``head``."""
    check_head(head)
    return 3 if head == "image" else TRANSFORM_CHANNELS


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known heads: {', '.join(HEADS)}")
    return head


def mark_zero_init(layer: nn.Module) -> nn.Module:
    """Flag ``layer`` so that ``init_weights`` sets its weight and bias to zero (identity start)."""
    layer.zero_init = True
    return layer


def pool_foreground(params: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, C, 1, 1): the mean over foreground pixels (the whole image if none)."""
    m = mask.to(params.dtype)
    area = m.sum(dim=(2, 3), keepdim=True)
    fg_mean = (params * m).sum(dim=(2, 3), keepdim=True) / area.clamp_min(1.0)
    return torch.where(area > 0, fg_mean, params.mean(dim=(2, 3), keepdim=True))


def apply_transform(params: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Apply a (B, 12, H, W) or (B, 12, 1, 1) transform map to a (B, 3, H, W) image in [-1, 1]."""
    p = params.float()
    da = p[:, :9].reshape(p.shape[0], 3, 3, *p.shape[-2:])
    x = image.float()
    out = x + (da * x[:, None]).sum(dim=2) + p[:, 9:12]  # (B,3,3,h,w) x (B,1,3,H,W): broadcasts
    return out.clamp(-1.0, 1.0)


class OutputHead(nn.Module):
    """Turn the generator's raw last-layer output into the harmonized image (and its transform)."""

    def __init__(self, head: str = "image"):
        super().__init__()
        self.head = check_head(head)
        self.channels = head_channels(head)
        # A transform head's correction is scaled by this (A = I + s dA, b = s b): 1 while training; the
        # generator spec's ``strength`` sets it, fitted on the val split after training (calibrate.py).
        self.strength = 1.0

    def transform(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The colour-transform map of a transform head (``None`` for ``image``), in float32."""
        if self.head == "image":
            return None
        raw = raw.float()
        t = pool_foreground(raw, mask) if self.head == "affine" else raw
        return t if self.strength == 1.0 else t * self.strength

    def forward(self, raw: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor):
        """``(prediction before paste-back, transform or None)``; the caller pastes the background back."""
        t = self.transform(raw, mask)
        if t is None:
            return torch.tanh(raw), None
        return apply_transform(t, composite).to(composite.dtype), t


def upsample_rows(params: torch.Tensor, height: int, width: int, row0: int, row1: int) -> torch.Tensor:
    """Rows ``row0:row1`` of ``params`` (1, C, h, w) bilinearly resized to (height, width).

    Identical to ``F.interpolate(..., mode="bilinear", align_corners=False)`` on the whole image, but
    computed a band of rows at a time, so a 12-channel map at 4096x4096 never has to exist at once.
    """
    _, c, h, w = params.shape
    if (h, w) == (1, 1):
        return params.expand(1, c, row1 - row0, width)
    cols = F.interpolate(params, size=(h, width), mode="bilinear", align_corners=False)  # (1, C, h, W)
    ys = (torch.arange(row0, row1, dtype=torch.float64) + 0.5) * (h / height) - 0.5
    ys = ys.clamp(min=0.0)
    y0 = ys.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wy = (ys - y0.double()).to(params.dtype)[None, None, :, None]
    return cols[:, :, y0] * (1 - wy) + cols[:, :, y1] * wy
