"""The authors' RainNet state dict against ours: the committed key table, the mapping, and depth apart
from input size (their network keeps 8 blocks at 512; specs without ``depth`` load as before)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.checkpoint import load_generator, save_generator
from components.models.authors_keys import AuthorsCheckpointError, authors_layout, convert, key_map, spec_for
from components.models.rainnet import PLACEMENTS, RainNet
from components.models.registry import build_model

TABLE = Path(__file__).with_name("rainnet_authors_keys.json")


def committed_table() -> dict[str, tuple[int, ...]]:
    return {k: tuple(shape) for k, shape in json.loads(TABLE.read_text())["tensors"]}


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in layout.items()}


def test_layout_is_the_committed_table_of_their_keys_and_shapes():
    table = committed_table()
    layout = authors_layout(64, 3)
    assert list(layout) == list(table)  # same keys, in their state_dict() order
    assert layout == table
    assert len(table) == 51
    assert sum(torch.Size(s).numel() for s in table.values()) == 54_759_043
    assert table["model_layer0.weight"] == (64, 3, 4, 4)
    assert table["unet_block.submodule.submodule.submodule.up.1.weight"] == (512, 512, 4, 4)  # innermost conv
    ours = RainNet(**{k: v for k, v in spec_for(64, 3, 256).items() if k != "name"})
    assert sum(p.numel() for p in ours.parameters()) == 54_759_043


def test_every_tensor_lands_on_its_own_layer():
    """Each of their tensors is copied, unchanged, into the layer the map names; none is used twice."""
    layout = authors_layout(8, 3)
    theirs = random_state(layout)
    ours = convert(theirs, ngf=8, input_nc=3)
    pairs = key_map()
    assert len({mine for _, mine in pairs}) == len(pairs) == len(ours)
    model = build_model(spec_for(8, 3, 256))
    model.load_state_dict(ours, strict=True)
    state = model.state_dict()
    for their_key, my_key in pairs:
        assert torch.equal(state[my_key], theirs[their_key]), their_key
    # Their published placement: RAIN in the decoder (slots 8-14), IN elsewhere.
    assert (
        "model_layer13norm.foreground_gamma" in layout and "model_layer1norm.foreground_gamma" not in layout
    )
    assert model.placement == PLACEMENTS["rain-decoder"]


def test_another_placement_asks_for_its_own_rain_tensors():
    layout = authors_layout(8, 3, "all-rain")
    assert "model_layer1norm.foreground_gamma" in layout and "unet_block.downnorm.background_beta" in layout
    with pytest.raises(AuthorsCheckpointError, match="unexpected key 'model_layer1norm.foreground_gamma'"):
        convert(random_state(layout), ngf=8, input_nc=3)  # an all-RAIN file read as rain-decoder


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("unet_block.submodule.upnorm.background_beta"),
         "missing key 'unet_block.submodule.upnorm.background_beta'"),
        (lambda s: s.__setitem__("model_layer12att.0.weight", torch.zeros(16, 16, 3, 3)),
         r"key 'model_layer12att.0.weight': shape \(16, 16, 3, 3\), expected \(32, 32, 1, 1\)"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected key 'extra.weight'"),
        (lambda s: s["model_out.1.bias"].fill_(float("nan")), "key 'model_out.1.bias': holds NaN"),
        (lambda s: s.__setitem__("model_layer2.1.weight", torch.zeros(32, 16, 4, 4, dtype=torch.long)),
         "key 'model_layer2.1.weight': not a floating-point tensor"),
    ],
)  # fmt: skip
def test_the_first_key_that_does_not_fit_is_named(change, message):
    state = random_state(authors_layout(8, 3))
    change(state)
    with pytest.raises(AuthorsCheckpointError, match=message):
        convert(state, ngf=8, input_nc=3)


def test_another_ngf_or_input_channel_count_is_named_with_what_the_file_has():
    with pytest.raises(AuthorsCheckpointError, match=r"model_layer0.weight.*expected \(64, 3, 4, 4\).*ngf 8"):
        convert(random_state(authors_layout(8, 3)))
    with pytest.raises(AuthorsCheckpointError, match=r"model_layer0.weight.*looks like ngf 8 with 4 input"):
        convert(random_state(authors_layout(8, 4)), ngf=8, input_nc=3)
    with pytest.raises(AuthorsCheckpointError, match="no key 'model_layer0.weight'.*encoders.0.conv.weight"):
        convert(RainNet(ngf=4, image_size=32).state_dict())  # a network of this project, not theirs


def test_depth_apart_from_size_keeps_eight_blocks_at_512():
    net = RainNet(ngf=2, image_size=512, depth=8)
    assert net.num_blocks == 8 and net.image_size_multiple == 256
    default512 = RainNet(ngf=2, image_size=512)
    assert default512.num_blocks == 9  # no depth: log2(size), as before
    # Table 1's slots are counted from the outermost block: the same layers at 256 and at 512 / depth 8.
    at256 = RainNet(ngf=2, image_size=256)
    assert {s: len(v) for s, v in net.slot_layers().items()} == {
        s: len(v) for s, v in at256.slot_layers().items()
    }
    x, m = torch.rand(1, 3, 512, 512) * 2 - 1, torch.zeros(1, 1, 512, 512)
    m[..., 100:300, 150:400] = 1
    feats = []
    hook = net.encoders[-1].register_forward_hook(lambda mod, inp, out: feats.append(out.shape))
    with torch.no_grad():
        y = net.eval()(x, m)
    hook.remove()
    assert y.shape == x.shape and feats[0][-2:] == (2, 2)  # their 512 model's 2x2 bottleneck
    for bad in (4, 10, 8.0, True):
        with pytest.raises(ValueError, match="depth must be an integer in 5..9"):
            RainNet(ngf=2, image_size=512, depth=bad)


def test_a_generator_saved_without_depth_loads_and_runs_as_before(tmp_path):
    """Today's generator files have no ``depth`` (nor ``skip_activation``) in their spec."""
    torch.manual_seed(0)
    spec = {"name": "rainnet", "placement": "rain-4", "ngf": 4, "image_size": 64, "head": "pct"}
    model = build_model(spec).eval()
    with torch.no_grad():  # the pct head starts at the identity: give its last layer something to do
        model.decoders[0].conv.weight.normal_(0, 0.05)
    path = tmp_path / "generator.pt"
    save_generator(str(path), model, spec, 64)
    loaded, info = load_generator(str(path))
    assert info["spec"] == spec and loaded.num_blocks == 6 and not loaded.skip_activation
    x, m = torch.rand(2, 3, 64, 64) * 2 - 1, torch.zeros(2, 1, 64, 64)
    m[..., 10:40, 20:50] = 1
    with torch.no_grad():
        assert torch.equal(loaded(x, m), model(x, m))
    assert list(loaded.state_dict()) == list(model.state_dict())
