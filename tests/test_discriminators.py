"""Discriminators: partial convolutions ignore masked-out pixels; domain codes see one region only; SN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.models import DomainDiscriminator, GlobalDiscriminator, PartialConv2d


def region_mask(b=2, size=32):
    m = torch.zeros(b, 1, size, size)
    m[:, :, 5:20, 9:27] = 1
    m[1, :, 0:3, 0:3] = 1  # a second, tiny island
    return m


def test_partial_conv_ignores_pixels_outside_its_mask():
    torch.manual_seed(0)
    pc = PartialConv2d(3, 5, spectral=False)
    x = torch.randn(2, 3, 32, 32)
    m = region_mask()
    out, new_m = pc(x, m)
    x2 = torch.where(m.bool(), x, torch.randn_like(x) * 100)  # change everything outside
    out2, new_m2 = pc(x2, m)
    assert torch.equal(out, out2) and torch.equal(new_m, new_m2)
    assert (out[new_m.expand_as(out) == 0] == 0).all()  # nothing where no valid pixel was seen
    assert new_m.shape == (2, 1, 16, 16) and 0 < new_m.sum() < new_m.numel()


def test_partial_conv_renormalizes_by_coverage():
    pc = PartialConv2d(1, 1, spectral=False)
    with torch.no_grad():
        pc.conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 8, 8)
    full, _ = pc(x, torch.ones(1, 1, 8, 8))
    half_mask = torch.zeros(1, 1, 8, 8)
    half_mask[..., ::2] = 1
    half, _ = pc(x, half_mask)
    # Plain conv of a constant image inside: 16; at zero-padded borders Liu et al. rescale to 16 too.
    assert torch.allclose(full, torch.full_like(full, 16.0))
    assert torch.allclose(half, torch.full_like(half, 16.0))
    plain = F.conv2d(x, pc.conv.weight, stride=2, padding=1)
    assert torch.allclose(full[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])


def test_domain_codes_see_only_their_region():
    torch.manual_seed(0)
    d = DomainDiscriminator(ndf=4).eval()  # eval: spectral norm does no power iteration step
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    m = region_mask()
    l_f, l_b = d.encode(img, m)
    new_bg = torch.where(m.bool(), img, torch.rand_like(img))
    new_fg = torch.where(m.bool(), torch.rand_like(img), img)
    l_f2, l_b2 = d.encode(new_bg, m)
    l_f3, l_b3 = d.encode(new_fg, m)
    assert torch.equal(l_f, l_f2) and not torch.equal(l_b, l_b2)
    assert torch.equal(l_b, l_b3) and not torch.equal(l_f, l_f3)
    score = d(img, m)
    assert score.shape == (2,)
    assert torch.allclose(score, (l_f * l_b).sum(1))


def test_domain_d_with_an_empty_region_is_finite():
    d = DomainDiscriminator(ndf=4)
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    m = torch.zeros(2, 1, 32, 32)
    m[1] = 1
    s = d(img, m)
    s.sum().backward()
    assert torch.isfinite(s).all() and torch.isfinite(img.grad).all()


def test_global_d_patch_scores_and_spectral_norm():
    torch.manual_seed(0)
    d = GlobalDiscriminator(ndf=4)
    img = torch.rand(3, 3, 64, 64) * 2 - 1
    assert d(img).shape == (3, 1, 6, 6)
    for _ in range(30):  # power iterations run in train mode
        d(img)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(c, "parametrizations") for c in convs)
    for c in convs:
        sigma = torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05
