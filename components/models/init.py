"""Weight initialization as the authors did it: N(0, gain) for conv / linear weights, N(1, gain) for BN."""

from __future__ import annotations

import torch
from torch import nn


def _weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight, also under a parametrization (spectral norm keeps it as ``original``)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


@torch.no_grad()
def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Initialize in place and return ``module``. RAIN affine vectors stay at zero (identity start), and
    so do layers flagged ``zero_init`` (a colour-transform head's last layer: the model starts as the
    identity)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            if getattr(m, "zero_init", False):
                nn.init.zeros_(_weight(m))
            else:
                nn.init.normal_(_weight(m), 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
