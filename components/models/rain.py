"""RAIN: region-aware adaptive instance normalization (RAINNET.md section 1), and the mask pyramid.

Why it is written this way:

* The foreground and background statistics come from ONE pass over the features: two batched
  matrix products of the shifted features ``d`` and ``d*d`` with the two region indicators
  ``[m, 1 - m]``. The naive layer walks the features once per region and per moment.
* One-pass variances lose precision when the data sit far from the shift. Each region is shifted by
  one of its own pixels (gathered, detached), so ``E[d^2] - E[d]^2`` never cancels badly, not even
  for a 1-pixel region; the algebra below is exact for any constant shift, so gradients are exact.
* Forward and backward are one fused autograd Function: the backward reuses the same two products
  on the incoming gradient and keeps only the shifted features ``d`` (no broadcast temporaries).
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


def _coefficients(s, q, n, k, gamma_f, beta_f, gamma_b, beta_b, eps):
    """Per-(sample, channel, region) output coefficients (B, C, 2) from the shifted sums.

    Index 0 is the foreground, 1 the background; ``y = d * A[region] + C[region]`` with ``d = x - K``.
    Small tensors only: autograd through this part is cheap.
    """
    n = n[:, None, :]  # (B, 1, 2)
    t = (s - k * eps) / (n + eps)  # mu - K, exactly, without cancellation
    var = ((q - 2.0 * t * s + t * t * n) / (n + eps)).clamp_min(0.0)
    sigma = torch.sqrt(var + eps)
    mu = (s + k * n) / (n + eps)  # exactly 0 for an empty region
    t_f, t_b = t[..., 0], t[..., 1]
    sig_f, sig_b = sigma[..., 0], sigma[..., 1]
    gf, gb = 1.0 + gamma_f[None], 1.0 + gamma_b[None]
    a_b = gb / sig_b
    c_b = beta_b[None] - t_b * a_b
    a_f = sig_b / sig_f * gf
    c_f = beta_f[None] + mu[..., 1] * gf - t_f * a_f
    return torch.stack([a_f, a_b], -1), torch.stack([c_f, c_b], -1)


def _expand(coef: torch.Tensor, ind_t: torch.Tensor) -> torch.Tensor:
    """(B, C, 2) per-region values -> (B, C, HW) per-pixel map; exact, since ``ind`` is 0/1."""
    return torch.bmm(coef, ind_t)


class _RAINFunction(torch.autograd.Function):
    """Fused RAIN: two batched products for the statistics, one fused pass for the output, and an
    analytic backward (the same two products on the gradient), so no full-size broadcast temporaries
    are kept for autograd: only ``d`` is saved."""

    @staticmethod
    def forward(ctx, x, ind, counts, anchors, gamma_f, beta_f, gamma_b, beta_b, eps):
        b, c, h, w = x.shape
        xv = x.reshape(b, c, h * w)
        k = torch.gather(xv, 2, anchors[:, None, :].expand(b, c, 2))  # one pixel of each region
        k_b = k[..., 1:2]
        diff = k[..., 0:1] - k_b
        k_eff = torch.cat([k_b + diff, k_b], -1)  # the shifts actually applied
        d = xv - k_b
        d.addcmul_(ind[:, None, :, 0], diff, value=-1.0)  # d = x - K_region(pixel)
        s = torch.bmm(d, ind)  # (B, C, 2) shifted sums per region
        q = torch.bmm(d * d, ind)  # (B, C, 2) shifted sums of squares per region
        params = (gamma_f, beta_f, gamma_b, beta_b)
        a, cc = _coefficients(s, q, counts, k_eff, *params, eps)
        ind_t = ind.transpose(1, 2)
        y = _expand(cc, ind_t)
        y.addcmul_(d, _expand(a, ind_t))
        ctx.save_for_backward(d, ind, counts, k_eff, s, q, *params)
        ctx.eps = eps
        return y.reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, gy):
        d, ind, counts, k_eff, s, q, *params = ctx.saved_tensors
        b, c, h, w = gy.shape
        with torch.autocast(device_type=gy.device.type, enabled=False):
            g = gy.reshape(b, c, h * w).to(d.dtype)
            g_a = torch.bmm(g * d, ind)  # dL/dA per region
            g_c = torch.bmm(g, ind)  # dL/dC per region
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(True) for t in (s, q, *params)]
                a, cc = _coefficients(*leaves[:2], counts, k_eff, *leaves[2:], ctx.eps)
                grads = torch.autograd.grad((a, cc), leaves, (g_a, g_c))
            g_s, g_q, *g_params = grads
            ind_t = ind.transpose(1, 2)
            dx = _expand(g_s, ind_t)
            dx.addcmul_(d, _expand(2.0 * g_q, ind_t))
            dx.addcmul_(g, _expand(a.detach(), ind_t))
        return (dx.reshape(b, c, h, w), None, None, None, *g_params, None)


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
    _, _, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        dt = _stat_dtype(x.dtype)
        ind, counts, anchors = pyramid.operands((h, w))
        params = [p.to(dt) for p in (gamma_f, beta_f, gamma_b, beta_b)]
        y = _RAINFunction.apply(x.to(dt).contiguous(), ind.to(dt), counts.to(dt), anchors, *params, eps)
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
