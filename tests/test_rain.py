"""RAIN against a straightforward two-pass float64 reference, gradients, empty regions, mask pyramid, bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.models import RAIN, MaskPyramid
from components.models import rain as rain_module

EPS = 1e-5


def reference_rain(x, mask, gamma_f, beta_f, gamma_b, beta_b, eps=EPS):
    """RAINNET.md section 1 written plainly: per-region two-pass statistics in float64."""
    x = x.double()
    m = F.interpolate(mask.double(), size=x.shape[-2:], mode="nearest")

    def stats(region):
        n = region.sum((2, 3), keepdim=True)
        mu = (x * region).sum((2, 3), keepdim=True) / (n + eps)
        var = (region * (x - mu) ** 2).sum((2, 3), keepdim=True) / (n + eps)
        return mu, torch.sqrt(var + eps)

    mu_f, sig_f = stats(m)
    mu_b, sig_b = stats(1 - m)

    def v(p):
        return p.double()[None, :, None, None]

    y_b = ((x - mu_b) / sig_b * (1 + v(gamma_b)) + v(beta_b)) * (1 - m)
    y_f = (((x - mu_f) / sig_f * sig_b + mu_b) * (1 + v(gamma_f)) + v(beta_f)) * m
    return y_f + y_b


def masks_with_edge_cases(batch: int, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Random masks, plus: empty, full, one foreground pixel, one background pixel."""
    m = (torch.rand(batch, 1, *size, generator=gen) > 0.6).float()
    m[0] = 0
    m[1] = 1
    m[2] = 0
    m[2, 0, size[0] // 3, size[1] // 2] = 1
    m[3] = 1
    m[3, 0, 0, size[1] - 1] = 0
    return m


def random_layer(c: int, gen: torch.Generator) -> RAIN:
    layer = RAIN(c)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(c, generator=gen) * 0.5)
    return layer


def rel_err_per_sample(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    err = (y.double() - ref).flatten(1).abs().amax(1)
    return err / ref.flatten(1).abs().amax(1).clamp_min(1e-30)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (4, 4), (16, 16), (24, 20)])
def test_matches_two_pass_reference(size):
    gen = torch.Generator().manual_seed(sum(size))
    b, c = 6, 5
    # Regions with different offsets and scales, like real features on two sides of a paste.
    x = torch.randn(b, c, *size, generator=gen) * 2.0 + 3.0
    m_full = masks_with_edge_cases(b, (32, 32), gen)  # resized to `size` inside, nearest
    m_here = F.interpolate(m_full, size=size, mode="nearest")
    x = x + 4.0 * m_here  # foreground shifted away from the background
    layer = random_layer(c, gen)
    y = layer(x, m_full)
    ref = reference_rain(x, m_full, layer.fg_gamma, layer.fg_beta, layer.bg_gamma, layer.bg_beta)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.isfinite(y).all()
    assert rel_err_per_sample(y, ref).max() < 1e-5


def test_one_pixel_regions_at_full_resolution():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=gen) * 5 - 7
    m = masks_with_edge_cases(4, (16, 16), gen)
    layer = random_layer(3, gen)
    ref = reference_rain(x, m, layer.fg_gamma, layer.fg_beta, layer.bg_gamma, layer.bg_beta)
    assert rel_err_per_sample(layer(x, m), ref).max() < 1e-5


def test_starts_as_identity_affine_and_normalizes_each_region():
    layer = RAIN(4)
    assert all(torch.equal(p, torch.zeros(4)) for p in layer.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:6, 2:6] = 1
    y = layer(x, m)
    assert y.dtype == x.dtype
    inside = m[0, 0] == 1
    xb, yb, yf = x[:, :, ~inside], y[:, :, ~inside], y[:, :, inside]
    # background: zero mean, unit variance per sample and channel
    assert torch.allclose(yb.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(yb.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3)
    # foreground: re-styled with the background's statistics of x
    assert torch.allclose(yf.mean(-1), xb.mean(-1), atol=1e-4)
    assert torch.allclose(yf.std(-1, unbiased=False), xb.std(-1, unbiased=False), rtol=1e-3)


def test_gradients_match_reference_and_are_finite_with_empty_regions():
    gen = torch.Generator().manual_seed(7)
    b, c = 6, 4
    for size in [(2, 2), (4, 4), (8, 8)]:
        x = (torch.randn(b, c, *size, generator=gen) * 2 + 1).requires_grad_(True)
        m = masks_with_edge_cases(b, (16, 16), gen)
        layer = random_layer(c, gen)
        w = torch.randn(b, c, *size, generator=gen)
        (layer(x, m) * w).sum().backward()
        grads = [x.grad] + [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert all(g.abs().sum() > 0 for g in grads)

        x64 = x.detach().double().requires_grad_(True)
        params = [p.detach().double().requires_grad_(True) for p in layer.parameters()]
        names = [n for n, _ in layer.named_parameters()]
        kw = dict(zip(names, params, strict=True))
        ref = reference_rain(x64, m, kw["fg_gamma"], kw["fg_beta"], kw["bg_gamma"], kw["bg_beta"])
        (ref * w.double()).sum().backward()
        for ours, theirs in zip(grads, [x64.grad] + [p.grad for p in params], strict=True):
            scale = theirs.abs().max().clamp_min(1e-12)
            assert ((ours.double() - theirs).abs().max() / scale) < 1e-3


def test_gradcheck_float64_with_an_empty_region():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    m = masks_with_edge_cases(4, (4, 4), gen)[[0, 2, 3]]
    layer = random_layer(2, gen).double()
    params = tuple(layer.parameters())

    def f(x, *p):
        return rain_module.rain_normalize(x, MaskPyramid(m), *p)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_mask_pyramid_resizes_once_per_size(monkeypatch):
    calls = []
    real = F.interpolate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(rain_module.F, "interpolate", counting)
    m = (torch.rand(2, 1, 32, 32) > 0.5).float()
    pyr = MaskPyramid(m)
    layers = [RAIN(3) for _ in range(6)]
    for i, layer in enumerate(layers):
        size = (8, 8) if i % 2 else (4, 4)
        layer(torch.randn(2, 3, *size), pyr)
    assert pyr.resizes == 2 and len(calls) == 2
    layers[0](torch.randn(2, 3, 32, 32), pyr)  # the mask's own size: no resize at all
    assert len(calls) == 2
    # A bare tensor mask works too (resized for that call).
    layers[0](torch.randn(2, 3, 4, 4), m)
    assert len(calls) == 3


def test_no_running_stats_train_equals_eval():
    layer = random_layer(3, torch.Generator().manual_seed(0))
    x, m = torch.randn(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    y_train = layer.train()(x, m)
    assert torch.equal(y_train, layer.eval()(x, m))
    assert len(list(layer.buffers())) == 0


def test_bfloat16_autocast_stays_finite_and_close():
    gen = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    layer = random_layer(8, gen)
    x = torch.randn(6, 3, 8, 8, generator=gen)
    m = masks_with_edge_cases(6, (8, 8), gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = layer(h, m)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    ref = reference_rain(h.float(), m, layer.fg_gamma, layer.fg_beta, layer.bg_gamma, layer.bg_beta)
    assert rel_err_per_sample(y.float(), ref).max() < 2e-2  # bf16 output rounding only
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bad_shapes_are_named():
    layer = RAIN(3)
    with pytest.raises(ValueError, match="RAIN\\(3\\)"):
        layer(torch.randn(1, 4, 4, 4), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        layer(torch.randn(1, 3, 4, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        layer(torch.randn(2, 3, 4, 4), torch.ones(1, 1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_reference():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 4, 16, 16, generator=gen) * 2 + 3
    m = masks_with_edge_cases(6, (32, 32), gen)
    layer = random_layer(4, gen)
    ref = reference_rain(x, m, layer.fg_gamma, layer.fg_beta, layer.bg_gamma, layer.bg_beta)
    y = layer.cuda()(x.cuda(), m.cuda()).cpu()
    assert rel_err_per_sample(y, ref).max() < 1e-5
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yb = layer(x.cuda().bfloat16(), m.cuda())
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()
