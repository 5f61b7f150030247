"""RAIN: region-aware adaptive instance normalization (RAINNET.md section 1), and the mask pyramid.

Why it is written this way:

* The foreground and background statistics come from ONE pass over the features: two batched
  matrix products of the shifted features ``d`` and ``d*d`` with the two region indicators
  ``[m, 1 - m]``. The naive layer walks the features once per region and per moment.
* One-pass variances lose precision when the data sit far from the shift. Each region is shifted by
  one of its own pixels (gathered, detached), so ``E[d^2] - E[d]^2`` never cancels badly, not even
  for a 1-pixel region; the algebra below is exact for any constant shift, so gradients are exact.
* Statistics are computed in float32 (or float64 for float64 inputs) with autocast off, so bfloat16
  autocast changes only the dtype of the result.
* The mask is resized once per spatial size per forward: a :class:`MaskPyramid` made by the
  generator caches every size (and the per-size indicator matrices) and is handed to every layer.
* Empty regions (all-0 / all-1 masks, common at 2x2 and 4x4) give ``N = 0``: the mean is 0, the
  variance 0, sigma ``sqrt(eps)``; everything stays finite, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


class MaskPyramid:
    """A foreground mask resized (nearest neighbour, no gradient) at most once per spatial size.

    ``resizes`` counts the interpolations actually done, so callers and tests can check the cache.
    """

    def __init__(self, mask: torch.Tensor):
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
        self.mask = mask.detach().float()
        self.resizes = 0
        self._masks: dict[tuple[int, int], torch.Tensor] = {tuple(self.mask.shape[-2:]): self.mask}
        self._operands: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        """The mask at ``size`` = (H, W), float32 (B, 1, H, W)."""
        size = (int(size[0]), int(size[1]))
        m = self._masks.get(size)
        if m is None:
            with torch.no_grad():
                m = F.interpolate(self.mask, size=size, mode="nearest").float()
            self._masks[size] = m
            self.resizes += 1
        return m

    def operands(self, size: tuple[int, int]):
        """Per-size RAIN operands: indicators (B, HW, 2) = [m, 1-m], counts (B, 2), anchors (B, 2).

        The anchors are one pixel index inside each region (any index when the region is empty);
        they pick the per-region shift of the one-pass variance.
        """
        size = (int(size[0]), int(size[1]))
        ops = self._operands.get(size)
        if ops is None:
            m = self.at(size)
            b = m.shape[0]
            flat = m.reshape(b, -1)
            ind = torch.stack([flat, 1.0 - flat], dim=-1)  # (B, HW, 2)
            counts = ind.sum(dim=1)  # (B, 2)
            anchors = torch.stack([flat.argmax(dim=1), (1.0 - flat).argmax(dim=1)], dim=1)  # (B, 2)
            ops = (ind, counts, anchors)
            self._operands[size] = ops
        return ops


def as_pyramid(mask: torch.Tensor | MaskPyramid) -> MaskPyramid:
    return mask if isinstance(mask, MaskPyramid) else MaskPyramid(mask)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rain_normalize(
    x: torch.Tensor,
    pyramid: MaskPyramid,
    gamma_f: torch.Tensor,
    beta_f: torch.Tensor,
    gamma_b: torch.Tensor,
    beta_b: torch.Tensor,
    eps: float = EPS,
) -> torch.Tensor:
    """The RAIN formula of RAINNET.md section 1, functional form. Returns ``x.dtype``."""
    b, c, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        dt = _stat_dtype(x.dtype)
        ind, counts, anchors = pyramid.operands((h, w))
        ind, counts = ind.to(dt), counts.to(dt)
        fg = pyramid.at((h, w)) > 0.5  # (B, 1, H, W) bool
        xv = x.to(dt).reshape(b, c, h * w)

        # Per-region shift: the feature value at one pixel of the region (detached: exact algebra).
        with torch.no_grad():
            k = torch.gather(xv, 2, anchors[:, None, :].expand(b, c, 2))  # (B, C, 2): [K_f, K_b]
        k_f, k_b = k[..., 0], k[..., 1]
        # d = x - K_region(pixel); exact selection (a lerp would round large coefficients).
        d = (x.to(dt) - torch.where(fg, k_f[..., None, None], k_b[..., None, None])).reshape(b, c, h * w)

        s = torch.bmm(d, ind)  # (B, C, 2): shifted sums per region
        q = torch.bmm(d * d, ind)  # (B, C, 2): shifted sums of squares per region
        n = counts[:, None, :]  # (B, 1, 2)
        t = (s - k * eps) / (n + eps)  # mu - K, exactly, without cancellation
        var = ((q - 2.0 * t * s + t * t * n) / (n + eps)).clamp_min(0.0)
        sigma = torch.sqrt(var + eps)
        mu = (s + k * n) / (n + eps)  # exactly 0 for an empty region
        t_f, t_b = t[..., 0], t[..., 1]
        sig_f, sig_b = sigma[..., 0], sigma[..., 1]
        mu_b = mu[..., 1]

        gf, bf = 1.0 + gamma_f.to(dt)[None], beta_f.to(dt)[None]
        gb, bb = 1.0 + gamma_b.to(dt)[None], beta_b.to(dt)[None]
        # y_R = d * a_R + c_R per region (see module docstring for the algebra).
        a_b = gb / sig_b
        c_b = bb - t_b * a_b
        a_f = sig_b / sig_f * gf
        c_f = bf + mu_b * gf - t_f * a_f

        d = d.reshape(b, c, h, w)
        scale = torch.where(fg, a_f[..., None, None], a_b[..., None, None])
        shift = torch.where(fg, c_f[..., None, None], c_b[..., None, None])
        y = torch.addcmul(shift, d, scale)
    return y.to(x.dtype)


class RAIN(nn.Module):
    """Region-aware adaptive instance normalization over ``num_features`` channels.

    ``forward(x, mask)``: ``mask`` is a :class:`MaskPyramid` (shared by all layers of one forward) or a
    (B, 1, h, w) tensor (then resized here). The four affine vectors start at zero (identity affine);
    no running statistics, so train and eval behave the same.
    """

    def __init__(self, num_features: int, eps: float = EPS):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.fg_gamma = nn.Parameter(torch.zeros(num_features))
        self.fg_beta = nn.Parameter(torch.zeros(num_features))
        self.bg_gamma = nn.Parameter(torch.zeros(num_features))
        self.bg_beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | MaskPyramid) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"RAIN({self.num_features}) expects (B, {self.num_features}, H, W), got {tuple(x.shape)}"
            )
        pyr = as_pyramid(mask)
        if pyr.mask.shape[0] != x.shape[0]:
            raise ValueError(f"mask batch {pyr.mask.shape[0]} != feature batch {x.shape[0]}")
        return rain_normalize(x, pyr, self.fg_gamma, self.fg_beta, self.bg_gamma, self.bg_beta, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
