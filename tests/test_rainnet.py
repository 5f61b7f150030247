"""RainNet generator: shapes, paste-back, eval determinism, Table 1 placements, slot layout, input_nc."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.models import PLACEMENTS, RAIN, RainNet, resolve_placement
from components.models import rain as rain_module

TABLE1_CHANNELS = {1: 128, 2: 256, 3: 512, 4: 512, 5: 512, 6: 512, 8: 512, 9: 512, 10: 512, 11: 512}
TABLE1_CHANNELS.update({12: 256, 13: 128, 14: 64})
TABLE1_SIZES = {1: 64, 2: 32, 3: 16, 4: 8, 5: 4, 6: 2, 8: 2, 9: 4, 10: 8, 11: 16, 12: 32, 13: 64, 14: 128}


def inputs(size: int, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    comp = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 3 : 3 * size // 4] = 1
    return comp, mask


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_output_shape_range_and_paste_back(size):
    g = RainNet(ngf=4, image_size=size)
    comp, mask = inputs(size)
    out = g(comp, mask)
    assert out.shape == comp.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1.0
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out[bg], comp[bg])  # background is the composite's, bit for bit
    assert not torch.equal(out[~bg], comp[~bg])
    assert g.image_size_multiple == size


def test_eval_mode_is_deterministic_and_dropout_switch_works():
    comp, mask = inputs(128)
    g = RainNet(ngf=4, image_size=128, dropout=True)
    g.train()
    assert not torch.equal(g(comp, mask), g(comp, mask))  # dropout active while training
    g.eval()
    assert torch.equal(g(comp, mask), g(comp, mask))
    g_nodrop = RainNet(ngf=4, image_size=128, dropout=False).train()
    assert not any(isinstance(m, nn.Dropout) for m in g_nodrop.modules())
    assert torch.equal(g_nodrop(comp, mask), g_nodrop(comp, mask))


def test_dropout_sits_on_the_three_wide_blocks_next_to_the_innermost():
    g = RainNet(ngf=4, image_size=256)
    with_dropout = [k + 1 for k, d in enumerate(g.decoders) if isinstance(d.dropout, nn.Dropout)]
    assert with_dropout == [5, 6, 7]  # slots 11, 10, 9 in Table 1 numbering


def slot_kinds(model: RainNet) -> dict[int, list[str]]:
    return {
        s: ["R" if isinstance(m, RAIN) else "I" for m in layers] for s, layers in model.slot_layers().items()
    }


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_each_table1_placement_puts_rain_exactly_in_its_slots(name):
    string = PLACEMENTS[name]
    g = RainNet(placement=name, ngf=2, image_size=256)
    kinds = slot_kinds(g)
    for slot in range(1, 15):
        if slot == 7:
            assert kinds[slot] == []  # innermost encoder conv: no normalization
        else:
            assert kinds[slot] == [string[slot - 1]], f"slot {slot} of {name}"
    assert sum(isinstance(m, RAIN) for m in g.modules()) == string[:6].count("R") + string[7:].count("R")
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in g.modules()) == string[:6].count("I") + string[
        7:
    ].count("I")


@pytest.mark.parametrize("name", ["rain-decoder", "rain-5", "rain-inner-3", "rain-decoder-1"])
def test_placements_at_the_laptop_size_keep_outer_slots(name):
    string = PLACEMENTS[name]
    g = RainNet(placement=name, ngf=2, image_size=64)
    kinds = slot_kinds(g)
    missing = {5, 6, 7, 9, 10}
    for slot in range(1, 15):
        assert kinds[slot] == ([] if slot in missing else [string[slot - 1]]), f"slot {slot} of {name} at 64"
    present_r = sum(string[s - 1] == "R" for s in range(1, 15) if s not in missing)
    assert sum(isinstance(m, RAIN) for m in g.modules()) == present_r


def test_slot_layers_match_table1_channels_and_sizes_at_256():
    g = RainNet(placement="all-rain", ngf=64, image_size=256)
    for slot, layers in g.slot_layers().items():
        assert [m.num_features for m in layers] == ([TABLE1_CHANNELS[slot]] if slot != 7 else [])
    small = RainNet(placement="all-rain", ngf=2, image_size=256)
    seen = {}
    for slot, layers in small.slot_layers().items():
        for m in layers:
            m.register_forward_hook(
                lambda mod, args, out, slot=slot: seen.__setitem__(slot, args[0].shape[-1])
            )
    small(*inputs(256, batch=1))
    assert seen == TABLE1_SIZES


def test_mask_resized_once_per_spatial_size(monkeypatch):
    calls = []
    real = rain_module.F.interpolate
    monkeypatch.setattr(
        rain_module.F, "interpolate", lambda *a, **k: calls.append(k["size"]) or real(*a, **k)
    )
    g = RainNet(placement="all-rain", ngf=2, image_size=64)
    out, aux = g(*inputs(64), return_aux=True)
    n_rain = sum(isinstance(m, RAIN) for m in g.modules())
    assert n_rain == 9
    assert sorted(calls) == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    assert aux["mask_resizes"] == 5


def test_input_nc_4_lets_the_mask_into_the_prediction():
    comp, mask = inputs(64)
    mask2 = torch.roll(mask, shifts=5, dims=-1)
    torch.manual_seed(0)
    g3 = RainNet(placement="baseline", ngf=4, image_size=64, input_nc=3).eval()
    torch.manual_seed(0)
    g4 = RainNet(placement="baseline", ngf=4, image_size=64, input_nc=4).eval()
    assert g4.encoders[0].conv.in_channels == 4
    _, a3 = g3(comp, mask, return_aux=True)
    _, b3 = g3(comp, mask2, return_aux=True)
    _, a4 = g4(comp, mask, return_aux=True)
    _, b4 = g4(comp, mask2, return_aux=True)
    assert torch.equal(a3["pred"], b3["pred"])  # IN-only, 3 channels: blind to the mask
    assert not torch.equal(a4["pred"], b4["pred"])


def test_attention_blocks_on_the_three_outermost_decoder_levels():
    g = RainNet(ngf=64, image_size=256)
    assert sorted(a.conv.in_channels for a in g.attention.values()) == [128, 256, 512]
    assert all(a.conv.kernel_size == (1, 1) for a in g.attention.values())
    assert len(RainNet(ngf=4, image_size=64, attention=False).attention) == 0


def test_backward_reaches_every_parameter_and_bf16_autocast_is_finite():
    g = RainNet(placement="all-rain", ngf=4, image_size=64)
    comp, mask = inputs(64)
    real = torch.rand_like(comp) * 2 - 1
    out = g(comp, mask)
    (out - real).abs().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    # RAIN affine vectors receive gradient although they start at zero (where both regions exist)
    outer = g.slot_layers()[14][0]
    assert all(p.grad.abs().sum() > 0 for p in outer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = g.eval()(comp, mask)
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out16[bg], comp[bg])


def test_runs_at_a_multiple_of_the_training_size_and_rejects_bad_inputs():
    g = RainNet(ngf=2, image_size=32).eval()
    comp, mask = inputs(64)
    assert g(comp, mask).shape == comp.shape
    with pytest.raises(ValueError, match="multiple of 32"):
        g(comp[..., :48], mask[..., :48])
    with pytest.raises(ValueError, match="mask"):
        g(comp, mask[:, :, :32])
    with pytest.raises(ValueError, match="image_size"):
        RainNet(image_size=100)
    with pytest.raises(ValueError, match="image_size"):
        RainNet(image_size=16)
    with pytest.raises(ValueError, match="input_nc"):
        RainNet(input_nc=1)


def test_resolve_placement():
    assert resolve_placement("rain-decoder") == "IIIIIIIRRRRRRR"
    assert resolve_placement("RAIN-Inner-3") == "IIIIRRRRRRIIII"
    assert resolve_placement("all_rain") == "R" * 14
    assert resolve_placement("iiiiiiiiiiiiir") == PLACEMENTS["rain-decoder-1"]
    assert RainNet(placement="RRRRRIIIIRRRRR", ngf=2, image_size=32).placement_name == "rain-5"
    for bad in ["rain-7", "IIIIIIIRRRRRR", "IIIIIIIRRRRRRX", ""]:
        with pytest.raises(ValueError, match="placement"):
            resolve_placement(bad)
    with pytest.raises(ValueError, match="placement"):
        resolve_placement(None)
