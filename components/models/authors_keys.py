"""The authors' RainNet state dict (junleen/RainNet, ``net_G_last.pth``) mapped one to one onto ours.

Their generator (``models/networks.py``: ``RainNet`` with a chain of ``UnetBlockCodec``) has 8 blocks at
any input size: four named encoder convs (``model_layer0`` .. ``model_layer3``), three middle blocks
and an innermost one nested as ``unet_block.submodule....``, three named decoder levels with attention
(``model_layer11`` .. ``model_layer13`` and ``...att``) and ``model_out``. Which normalization layers
carry RAIN parameters (``foreground_gamma`` ...) follows their ``norm_type_indicator``, our placement
string (their default, the published one, is ``rain-decoder``); InstanceNorm slots hold no tensor.

Pure functions, no I/O: ``authors_layout`` says which keys and shapes a checkpoint must have,
``convert`` checks a loaded state dict against it and renames it for :class:`RainNet`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .rainnet import RainNet, resolve_placement

DEPTH = 8  # the authors' network: 8 stride-2 blocks whatever the input size
MIDDLE = ("unet_block", "unet_block.submodule", "unet_block.submodule.submodule")  # blocks 5, 6, 7
INNERMOST = "unet_block.submodule.submodule.submodule"  # block 8
RAIN_NAMES = {  # theirs -> ours (components/models/rain.py)
    "foreground_gamma": "fg_gamma",
    "foreground_beta": "fg_beta",
    "background_gamma": "bg_gamma",
    "background_beta": "bg_beta",
}


class AuthorsCheckpointError(ValueError):
    """A state dict that is not the authors' RainNet of the expected layout; the message names the key."""


def spec_for(ngf: int, input_nc: int, image_size: int, placement: str = "rain-decoder") -> dict:
    """Our generator spec for their network at ``image_size`` (256 or 512: the size it was trained at)."""
    return {
        "name": "rainnet",
        "placement": placement,
        "ngf": int(ngf),
        "input_nc": int(input_nc),
        "image_size": int(image_size),
        "depth": DEPTH,
        "attention": True,
        "dropout": True,  # their default (no_dropout False); a no-op in eval mode
        "head": "image",
        "skip_activation": True,
    }


def _norm(theirs: str, ours: str, kind: str) -> list[tuple[str, str]]:
    return [(f"{theirs}.{a}", f"{ours}.{b}") for a, b in RAIN_NAMES.items()] if kind == "R" else []


def key_map(placement: str = "rain-decoder") -> list[tuple[str, str]]:
    """``(their key, our key)`` for every tensor, in the order of their ``state_dict()``."""
    p = resolve_placement(placement)  # p[s - 1]: slot s
    pairs = [("model_layer0.weight", "encoders.0.conv.weight")]
    for k in (2, 3, 4):  # model_layer1..3: encoder blocks 2..4, slots 1..3
        pairs.append((f"model_layer{k - 1}.1.weight", f"encoders.{k - 1}.conv.weight"))
        pairs += _norm(f"model_layer{k - 1}norm", f"encoders.{k - 1}.norm", p[k - 2])

    def middle(i: int) -> list[tuple[str, str]]:  # block 5 + i, encoder slot 4 + i, decoder slot 11 - i
        name, k = MIDDLE[i], 5 + i
        out = [(f"{name}.down.1.weight", f"encoders.{k - 1}.conv.weight")]
        out += _norm(f"{name}.downnorm", f"encoders.{k - 1}.norm", p[3 + i])
        inner = middle(i + 1) if i + 1 < len(MIDDLE) else innermost()
        out += inner
        out.append((f"{name}.up.1.weight", f"decoders.{k - 1}.conv.weight"))
        out += _norm(f"{name}.upnorm", f"decoders.{k - 1}.norm", p[10 - i])
        return out

    def innermost() -> list[tuple[str, str]]:  # block 8: slot 7 has no layer, decoder slot 8
        out = [(f"{INNERMOST}.up.1.weight", "encoders.7.conv.weight")]
        out.append((f"{INNERMOST}.up.3.weight", "decoders.7.conv.weight"))
        return out + _norm(f"{INNERMOST}.upnorm", "decoders.7.norm", p[7])

    # Their state_dict() lists modules in creation order: layers 0-3, the U-Net chain, then 11-13, out.
    encoder_and_head = pairs
    chain = middle(0)
    decoder = []
    for level, k in ((11, 4), (12, 3), (13, 2)):  # decoder blocks 4, 3, 2: slots 12, 13, 14
        decoder.append((f"model_layer{level}.1.weight", f"decoders.{k - 1}.conv.weight"))
        decoder += _norm(f"model_layer{level}norm", f"decoders.{k - 1}.norm", p[16 - k - 1])
        decoder += [(f"model_layer{level}att.0.{t}", f"attention.{k}.conv.{t}") for t in ("weight", "bias")]
    decoder += [(f"model_out.1.{t}", f"decoders.0.conv.{t}") for t in ("weight", "bias")]
    return encoder_and_head + chain + decoder


def authors_layout(ngf: int, input_nc: int, placement: str = "rain-decoder") -> dict[str, tuple[int, ...]]:
    """Their key -> shape for a network of ``ngf`` filters and ``input_nc`` input channels."""
    ours = RainNet(placement, ngf=ngf, input_nc=input_nc, image_size=2**DEPTH, depth=DEPTH).state_dict()
    return {theirs: tuple(ours[mine].shape) for theirs, mine in key_map(placement)}


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def convert(
    state: Mapping, ngf: int = 64, input_nc: int = 3, placement: str = "rain-decoder"
) -> dict[str, torch.Tensor]:
    """Check ``state`` (their state dict) key by key against the layout and return ours (float32).

    ``AuthorsCheckpointError`` names the first key that does not fit: missing, of another shape, not a
    floating-point tensor, not finite, or not part of the layout at all.
    """
    if not isinstance(state, Mapping):
        raise AuthorsCheckpointError(
            f"holds a {type(state).__name__}, not a state dict (a mapping of tensors)"
        )
    expected = authors_layout(ngf, input_nc, placement)
    first = "model_layer0.weight"
    if first not in state:
        keys = ", ".join(list(map(str, state))[:3]) or "none"
        raise AuthorsCheckpointError(
            f"not the authors' RainNet generator: no key {first!r} (its first keys: {keys})"
        )
    got0 = state[first]
    if isinstance(got0, torch.Tensor) and got0.dim() == 4 and _shape(got0) != expected[first]:
        raise AuthorsCheckpointError(
            f"key {first!r}: shape {_shape(got0)}, expected {expected[first]} for ngf {ngf} and {input_nc} "
            f"input channels (the file looks like ngf {got0.shape[0]} with {got0.shape[1]} input channels)"
        )
    names = dict(key_map(placement))
    out: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        if key not in state:
            raise AuthorsCheckpointError(
                f"missing key {key!r} (expected shape {shape}, placement {placement})"
            )
        t = state[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise AuthorsCheckpointError(f"key {key!r}: not a floating-point tensor ({type(t).__name__})")
        if _shape(t) != shape:
            raise AuthorsCheckpointError(f"key {key!r}: shape {_shape(t)}, expected {shape}")
        if not bool(torch.isfinite(t).all()):
            raise AuthorsCheckpointError(f"key {key!r}: holds NaN or Inf")
        out[names[key]] = t.detach().to(torch.float32)
    extra = [k for k in state if k not in expected]
    if extra:
        raise AuthorsCheckpointError(
            f"unexpected key {extra[0]!r} ({len(extra)} not in the authors' RainNet with placement {placement})"
        )
    return out
