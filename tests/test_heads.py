"""Output heads (``image``, ``affine``, ``pct``) on every generator family, and the Predictor around them.

Transform heads start as the identity (zero-initialised last layer), train, and carry their transform to
any resolution with the background byte-identical; at the network's own size the Predictor returns the
network's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.data.images import from_uint8, images_to_uint8, to_uint8
from components.inference.predictor import Predictor
from components.models import build_model, init_weights
from components.models.heads import HEADS, apply_transform, head_channels, upsample_rows

SIZE = 32
FAMILIES = {
    "rainnet": {"name": "rainnet", "placement": "rain-decoder", "ngf": 8},
    "dih": {"name": "dih", "ngf": 8},
    "dih_rain": {"name": "dih_rain", "ngf": 8},
}
TRANSFORM_HEADS = [h for h in HEADS if h != "image"]


def make(family: str, head: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return init_weights(build_model({**FAMILIES[family], "head": head, "image_size": SIZE}))


def last_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The generator's output layer (the one a transform head zero-initialises)."""
    return model.decoders[0].conv if hasattr(model, "decoders") else model.decoder[0].conv


def perturb(model: torch.nn.Module, seed: int = 1, std: float = 0.05) -> torch.nn.Module:
    """Small random weights and bias on the last layer: a model off its identity start, as after training."""
    gen = torch.Generator().manual_seed(seed)
    layer = last_layer(model)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.2)
    return model.eval()


def batch(size: int = SIZE, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8-level composites in [-1, 1] (so to_uint8 round-trips) and a binary rectangle mask."""
    gen = torch.Generator().manual_seed(seed)
    comp = from_uint8(torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8))
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4 : 3 * size // 4, size // 8 : size // 2 + 3] = 1
    return comp, mask


def disc_mask(h: int, w: int, soft_border: bool = True) -> np.ndarray:
    """uint8 alpha (H, W): an off-centre ellipse, with a ramp of soft alpha on its border."""
    yy = (np.arange(h, dtype=np.float32)[:, None] - 0.45 * h) / (0.3 * h)
    xx = (np.arange(w, dtype=np.float32)[None, :] - 0.55 * w) / (0.25 * w)
    r = np.sqrt(yy * yy + xx * xx)
    if not soft_border:
        return np.where(r < 1.0, 255, 0).astype(np.uint8)
    return np.clip(np.rint((1.05 - r) / 0.1 * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Every head on every family: builds, starts where it should, trains
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_builds_starts_as_identity_and_trains_one_step(family, head):
    model = make(family, head)
    comp, mask = batch()
    assert last_layer(model).out_channels == head_channels(head)

    model.eval()
    with torch.no_grad():
        out, aux = model(comp, mask, return_aux=True)
    assert out.shape == comp.shape and out.dtype == comp.dtype
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out[bg], comp[bg])  # paste-back: exact background, whatever the head
    if head == "image":
        assert aux["transform"] is None
        assert float(out.abs().max()) <= 1.0  # tanh range
    else:
        # The identity at initialisation: the zero last layer gives a zero transform, the composite back.
        expected = (2, 12, SIZE, SIZE) if head == "pct" else (2, 12, 1, 1)
        assert tuple(aux["transform"].shape) == expected
        assert torch.count_nonzero(aux["transform"]) == 0
        assert torch.equal(to_uint8(out), to_uint8(comp))
        assert torch.equal(to_uint8(aux["pred"]), to_uint8(comp))

    # One training step towards a colour-shifted foreground.
    model.train()
    target = torch.where(mask.bool(), (comp * 0.8 + 0.1).clamp(-1, 1), comp)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = (model(comp, mask) - target).abs().mean()
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    layer = last_layer(model)
    assert float(layer.weight.grad.abs().sum()) > 0 and float(layer.bias.grad.abs().sum()) > 0
    opt.step()
    model.eval()
    with torch.no_grad():
        after, aux_after = model(comp, mask, return_aux=True)
        before = out
    assert torch.equal(after[bg], comp[bg])
    assert not torch.equal(to_uint8(after), to_uint8(before))  # the step changed the foreground
    if head != "image":
        assert torch.count_nonzero(aux_after["transform"]) > 0


# --------------------------------------------------------------------------------------------------
# The transform and its upsampling
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 12, 16, 16), (2, 12, 1, 1)])
def test_apply_transform_zero_params_is_the_identity(shape):
    comp, _ = batch(size=16)
    comp = torch.cat([comp[:, :, :8], torch.rand(2, 3, 8, 16) * 2 - 1], dim=2)  # off-level values too
    assert torch.equal(apply_transform(torch.zeros(shape), comp), comp)


def test_apply_transform_is_a_clamped_3x4_matrix_per_pixel():
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(1, 12, 4, 5, generator=gen) * 0.3
    img = torch.rand(1, 3, 4, 5, generator=gen) * 2 - 1
    out = apply_transform(params, img)
    for y, x in ((0, 0), (1, 3), (3, 4)):
        a = torch.eye(3) + params[0, :9, y, x].reshape(3, 3)
        want = (a @ img[0, :, y, x] + params[0, 9:, y, x]).clamp(-1, 1)
        torch.testing.assert_close(out[0, :, y, x], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("src", "dst", "bands"),
    [
        ((8, 8), (37, 53), [0, 7, 20, 21, 37]),  # up, by non-integer factors, uneven bands
        ((8, 8), (32, 32), [0, 16, 32]),  # up, by an exact factor
        ((8, 6), (5, 4), [0, 2, 5]),  # down (an image smaller than the network)
        ((8, 8), (8, 8), [0, 3, 8]),  # the network's own size
    ],
)
def test_upsample_rows_in_bands_equals_interpolate_on_the_whole_map(src, dst, bands):
    params = torch.randn(1, 12, *src, generator=torch.Generator().manual_seed(0))
    whole = F.interpolate(params, size=dst, mode="bilinear", align_corners=False)
    got = torch.cat(
        [upsample_rows(params, *dst, r0, r1) for r0, r1 in zip(bands, bands[1:], strict=False)], 2
    )
    assert got.shape == whole.shape
    # Float32 rounding apart (the weights are formed in another order; |params| ~ 3, so ~1e-6): the same.
    torch.testing.assert_close(got, whole, rtol=1e-6, atol=1e-5)
    assert torch.equal(got, upsample_rows(params, *dst, 0, dst[0]))  # the bands do not change a value
    if src == dst:
        assert torch.equal(got, params)


def test_upsample_rows_of_a_per_image_transform_is_constant():
    params = torch.randn(1, 12, 1, 1)
    got = upsample_rows(params, 40, 30, 5, 17)
    assert got.shape == (1, 12, 12, 30) and torch.equal(got, params.expand(1, 12, 12, 30))


# --------------------------------------------------------------------------------------------------
# The Predictor around each head
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_predictor_at_4096_keeps_every_background_pixel(head):
    """A 4096x4096 composite with a soft-edged object: mask-0 pixels byte-identical, the object changed."""
    torch.manual_seed(0)
    model = perturb(
        init_weights(build_model({**FAMILIES["rainnet"], "ngf": 4, "head": head, "image_size": SIZE}))
    )
    h = w = 4096
    rng = np.random.default_rng(0)
    comp = np.empty((h, w, 3), np.uint8)
    ramp = np.linspace(30, 220, w).astype(np.int16)
    for c in range(3):  # a smooth picture with noise, a channel at a time in int16 (memory stays modest)
        noise = rng.integers(-20, 21, (h, w), dtype=np.int16)
        comp[..., c] = np.clip(ramp[None, :] * (3 + c) // 5 + noise, 0, 255)
    mask = disc_mask(h, w)
    bg, fg = mask == 0, mask == 255
    assert bg.any() and fg.any() and ((mask > 0) & (mask < 255)).any()

    out = Predictor(model, SIZE, device="cpu")(comp, mask)

    assert out.shape == comp.shape and out.dtype == np.uint8
    assert np.array_equal(out[bg], comp[bg])
    assert (out[fg] != comp[fg]).any(axis=-1).mean() > 0.5  # the model really acted on the object


@pytest.mark.parametrize("head", TRANSFORM_HEADS)
def test_untrained_transform_head_returns_the_composite_at_any_size(head):
    model = make("rainnet", head).eval()
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (203, 301, 3), dtype=np.uint8)
    mask = disc_mask(203, 301)
    assert np.array_equal(Predictor(model, SIZE, device="cpu")(comp, mask), comp)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_predictor_at_the_network_size_is_the_network_output(family, head):
    model = perturb(make(family, head))
    comp_t, mask_t = batch(n=1, seed=3)
    with torch.no_grad():
        own = images_to_uint8(model(comp_t, mask_t))[0]  # the network's own uint8 output, pasted
    comp = images_to_uint8(comp_t)[0]
    mask = (mask_t[0, 0].numpy() * 255).astype(np.uint8)
    fg = mask > 0
    assert (own[fg] != comp[fg]).any()  # not the identity: the comparison means something

    predictor = Predictor(model, SIZE, device="cpu")
    native, paper = predictor.predict_with_protocol(comp, mask)
    assert np.array_equal(paper, own)
    assert np.array_equal(native, own)
    assert np.array_equal(predictor(comp, mask), own)
