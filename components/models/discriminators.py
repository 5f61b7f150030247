"""Discriminators (RAINNET.md section 4): a global PatchGAN D and the domain-verification D, both spectral-normed.

The domain encoder is built from partial convolutions (Liu et al. 2018): a conv over ``x * mask``
rescaled by ``window / mask coverage``, zero where the window sees no valid pixel, and an updated
mask (any valid pixel in the window). Foreground and background are encoded with the same weights
under ``m`` and ``1 - m``, so each region's code is computed from that region's pixels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


class GlobalDiscriminator(nn.Module):
    """PatchGAN: ``forward(image) -> (B, 1, h, w)`` patch scores (hinge losses use their mean)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, spectral: bool = True):
        super().__init__()
        layers: list[nn.Module] = [_sn(nn.Conv2d(input_nc, ndf, 4, 2, 1), spectral), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [_sn(nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1), spectral), nn.LeakyReLU(0.2)]
        layers.append(_sn(nn.Conv2d(ndf * mult, 1, 4, 1, 1), spectral))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class PartialConv2d(nn.Module):
    """Partial convolution: ``forward(x, mask) -> (out, new_mask)``; pixels where mask = 0 never matter."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 4, stride: int = 2, padding: int = 1, spectral: bool = True
    ):
        super().__init__()
        self.conv = _sn(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), spectral)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.register_buffer("window", torch.ones(1, 1, kernel, kernel), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cover = F.conv2d(mask.float(), self.window, stride=self.stride, padding=self.padding)
            new_mask = (cover > 0).float()
            ratio = (self.kernel * self.kernel) / cover.clamp_min(1.0) * new_mask
        out = self.conv(x * mask.to(x.dtype))
        out = out * ratio.to(out.dtype) + self.bias.view(1, -1, 1, 1).to(out.dtype) * new_mask.to(out.dtype)
        return out, new_mask


class DomainEncoder(nn.Module):
    """Partial convs + masked average pooling + linear: ``(image, region mask) -> (B, code_dim)``."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4, spectral: bool = True):
        super().__init__()
        widths = [input_nc] + [ndf * min(2**i, 8) for i in range(n_layers)]
        self.convs = nn.ModuleList(
            PartialConv2d(widths[i], widths[i + 1], spectral=spectral) for i in range(n_layers)
        )
        self.act = nn.LeakyReLU(0.2)
        self.fc = _sn(nn.Linear(widths[-1], widths[-1]), spectral)

    def forward(self, image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        x, m = image, region
        for conv in self.convs:
            x, m = conv(x, m)
            x = self.act(x)
        pooled = (x * m.to(x.dtype)).sum((2, 3)) / m.sum((2, 3)).clamp_min(1.0).to(x.dtype)
        return self.fc(pooled)


class DomainDiscriminator(nn.Module):
    """Domain verification: ``forward(image, mask) -> (B,)`` score ``l_f . l_b`` (real pairs score high)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4, spectral: bool = True):
        super().__init__()
        self.encoder = DomainEncoder(input_nc, ndf, n_layers, spectral)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(l_f, l_b): both regions encoded in one batched pass with shared weights."""
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be (B, 1, H, W) matching the image, got {tuple(mask.shape)}")
        m = mask.float()
        codes = self.encoder(torch.cat([image, image], 0), torch.cat([m, 1.0 - m], 0))
        return codes.chunk(2, 0)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        l_f, l_b = self.encode(image, mask)
        return (l_f * l_b).sum(1)
