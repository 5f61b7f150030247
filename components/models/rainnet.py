"""The RainNet generator (RAINNET.md section 2): a pix2pix U-Net whose 14 normalization slots are IN or RAIN.

Layout. The U-Net is a stack of ``n`` blocks, ``depth`` (default ``log2(image_size)``: 256 -> 8; the
authors' network keeps 8 at any input, so their 512 model has a 2x2 bottleneck). Block ``k`` (1 = outermost)
holds encoder conv ``e_k`` (stride 2) and decoder transposed conv ``d_k``; its channel width is
``ngf * min(2**(k-1), 8)``. ``e_1`` and the output layer ``d_1`` have no normalization, the innermost
encoder conv ``e_n`` has none either (slot 7 exists only for symmetry), and dropout follows the
normalization of the three 8*ngf decoder blocks next to the innermost one (when they exist).
Attention blocks ``sigmoid(conv1x1(F)) * F`` act on the outputs of blocks 4, 3 and 2 (encoder and
decoder features concatenated: 8, 4 and 2 * ngf channels), the three outermost decoder levels.

Slots at other depths. Table 1's slots are tied to depth from the image, not to spatial size,
because the paper's findings are about low-level (outermost) versus inner features:

* slots 1, 2, 3 and 14, 13, 12 are always blocks 2, 3, 4 (the channel-growing outer blocks);
* slot 7 (no layer) and slot 8 are always the innermost block;
* slots 4/11, 5/10, 6/9 are the 8*ngf "middle" blocks 5 .. n-1, outermost first. 256 has exactly
  three; 128 has two (slots 6 and 9 have no layer), 64 has one (slots 5, 6, 9, 10 have no layer),
  32 has none. Larger inputs (512: four middle blocks) repeat slots 6/9 for the extra inner blocks.

So at the laptop size 64x64 a placement string keeps its meaning for the outer layers (RAIN-Decoder-1..4,
RAIN-1..4, the outer half of RAIN-5/6) and only the letters of the missing inner slots are ignored.
Inputs must be at least 32x32 (5 blocks) and square powers of two at construction; at run time any
H and W that are multiples of ``image_size_multiple`` (2**n) work.

``skip_activation``: the authors' code concatenates each skip after the next encoder's LeakyReLU (an
in-place activation of pix2pix's U-Net rewrites the stored encoder output); off by default, so models
trained here keep their behaviour, on for imported authors' checkpoints (``authors_keys.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .heads import OutputHead, head_channels, mark_zero_init
from .rain import RAIN, MaskPyramid

NUM_SLOTS = 14
MIN_IMAGE_SIZE = 32

PLACEMENTS: dict[str, str] = {
    "baseline": "IIIIIIIIIIIIII",
    "rain-decoder-1": "IIIIIIIIIIIIIR",
    "rain-decoder-2": "IIIIIIIIIIIIRR",
    "rain-decoder-3": "IIIIIIIIIIIRRR",
    "rain-decoder-4": "IIIIIIIIIIRRRR",
    "rain-decoder": "IIIIIIIRRRRRRR",
    "rain-encoder": "RRRRRRRRIIIIII",
    "rain-1": "RIIIIIIIIIIIIR",
    "rain-2": "RRIIIIIIIIIIRR",
    "rain-3": "RRRIIIIIIIIRRR",
    "rain-4": "RRRRIIIIIIRRRR",
    "rain-5": "RRRRRIIIIRRRRR",
    "rain-6": "RRRRRRIIRRRRRR",
    "rain-inner-3": "IIIIRRRRRRIIII",
    "rain-inner-4": "IIIRRRRRRRRIII",
    "rain-inner-5": "IIRRRRRRRRRRII",
    "all-rain": "RRRRRRRRRRRRRR",
}


def resolve_placement(name_or_string: str) -> str:
    """A Table 1 name (``rain-5``, case-insensitive) or a 14-character ``I``/``R`` string -> the string."""
    if not isinstance(name_or_string, str):
        raise ValueError(f"placement must be a string, got {name_or_string!r}")
    key = name_or_string.strip().lower().replace("_", "-")
    if key in PLACEMENTS:
        return PLACEMENTS[key]
    s = name_or_string.strip().upper()
    if len(s) == NUM_SLOTS and set(s) <= {"I", "R"}:
        return s
    raise ValueError(
        f"unknown placement {name_or_string!r}: use one of {', '.join(PLACEMENTS)} "
        f"or a {NUM_SLOTS}-character string of I (InstanceNorm) and R (RAIN), e.g. 'IIIIIIIRRRRRRR'"
    )


def num_blocks_for(image_size: int) -> int:
    """Number of U-Net blocks (stride-2 downsamplings) for a square power-of-two input."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return int(math.log2(image_size))


def check_depth(depth: int, image_size: int) -> int:
    """An explicit depth: 5 .. log2(image_size) blocks (the bottleneck is at least 1x1)."""
    most = num_blocks_for(image_size)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 5 <= depth <= most:
        raise ValueError(f"depth must be an integer in 5..{most} for image_size {image_size}, got {depth!r}")
    return depth


def slot_map(n: int) -> dict[int, tuple[int | None, int]]:
    """Block k -> (encoder slot or None, decoder slot) for a U-Net of ``n`` blocks; block 1 has no slots."""
    out: dict[int, tuple[int | None, int]] = {}
    for k in range(2, n):
        if k <= 4:
            out[k] = (k - 1, 16 - k)  # slots 1..3 / 14..12
        else:
            enc = min(k - 1, 6)  # middle blocks 5, 6, 7 -> slots 4, 5, 6; deeper ones reuse 6
            out[k] = (enc, 15 - enc)
    out[n] = (None, 8)  # innermost: slot 7 has no layer
    return out


def make_norm(kind: str, channels: int) -> nn.Module:
    return (
        RAIN(channels)
        if kind == "R"
        else nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    )


def apply_norm(norm: nn.Module, x: torch.Tensor, pyramid: MaskPyramid) -> torch.Tensor:
    return norm(x, pyramid) if isinstance(norm, RAIN) else norm(x)


class Attention(nn.Module):
    """Supplementary B.1: ``F_out = sigmoid(conv1x1(F_in)) * F_in``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)) * x


class Down(nn.Module):
    """[LeakyReLU(0.2)] -> conv 4x4 s2 (no bias) -> [norm]."""

    def __init__(self, cin: int, cout: int, act: bool, norm: nn.Module | None):
        super().__init__()
        self.act = nn.LeakyReLU(0.2) if act else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor, pyramid: MaskPyramid) -> torch.Tensor:
        return apply_norm(self.norm, self.conv(self.act(x)), pyramid)


class Up(nn.Module):
    """ReLU -> transposed conv 4x4 s2 -> [norm] -> [dropout 0.5]."""

    def __init__(self, cin: int, cout: int, norm: nn.Module | None, dropout: bool, bias: bool = False):
        super().__init__()
        self.act = nn.ReLU()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)
        self.norm = norm if norm is not None else nn.Identity()
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor, pyramid: MaskPyramid) -> torch.Tensor:
        return self.dropout(apply_norm(self.norm, self.conv(self.act(x)), pyramid))


def check_inputs(composite: torch.Tensor, mask: torch.Tensor, multiple: int, input_nc: int = 3) -> None:
    """Shape checks shared by the generators, with messages a user can act on."""
    if composite.dim() != 4 or composite.shape[1] != 3:
        raise ValueError(f"composite must be (B, 3, H, W), got {tuple(composite.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != composite.shape[0]:
        raise ValueError(f"mask must be (B, 1, H, W) matching the composite, got {tuple(mask.shape)}")
    if mask.shape[-2:] != composite.shape[-2:]:
        raise ValueError(
            f"mask size {tuple(mask.shape[-2:])} != composite size {tuple(composite.shape[-2:])}"
        )
    h, w = composite.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"input {h}x{w} is not a multiple of {multiple} (image_size_multiple of this model)")


def paste_back(pred: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pred * m + composite * (1 - m)`` in the composite's dtype: exact background for binary masks."""
    m = mask.to(composite.dtype)
    return pred.to(composite.dtype) * m + composite * (1 - m)


class RainNet(nn.Module):
    """RainNet U-Net generator. ``forward(composite, mask, return_aux=False)`` -> pasted image (B, 3, H, W).

    ``head`` (``image``, ``affine``, ``pct``; ``heads.py``) says what the last layer predicts;
    ``depth`` the number of blocks (None: from ``image_size``).
    """

    def __init__(
        self,
        placement: str = "rain-decoder",
        ngf: int = 64,
        input_nc: int = 3,
        image_size: int = 256,
        attention: bool = True,
        dropout: bool = True,
        head: str = "image",
        depth: int | None = None,
        skip_activation: bool = False,
    ):
        super().__init__()
        self.head = OutputHead(head)
        if input_nc not in (3, 4):
            raise ValueError(f"input_nc must be 3 (composite) or 4 (composite + mask), got {input_nc!r}")
        if not isinstance(ngf, int) or ngf < 1:
            raise ValueError(f"ngf must be a positive integer, got {ngf!r}")
        self.placement = resolve_placement(placement)
        self.placement_name = next((k for k, v in PLACEMENTS.items() if v == self.placement), self.placement)
        self.ngf, self.input_nc, self.image_size = ngf, input_nc, image_size
        n = num_blocks_for(image_size) if depth is None else check_depth(depth, image_size)
        self.num_blocks = n
        self.skip_activation = bool(skip_activation)
        self.image_size_multiple = 2**n
        slots = slot_map(n)
        width = [input_nc] + [ngf * min(2 ** (k - 1), 8) for k in range(1, n + 1)]  # width[k] = C_k

        enc, dec = [], []
        for k in range(1, n + 1):
            es, ds = slots.get(k, (None, None))
            enc_norm = make_norm(self.placement[es - 1], width[k]) if es is not None else None
            enc.append(Down(width[k - 1], width[k], act=k > 1, norm=enc_norm))
            if k == 1:
                dec.append(Up(2 * width[1], head_channels(head), norm=None, dropout=False, bias=True))
                if head != "image":
                    mark_zero_init(dec[-1].conv)
            else:
                cin = width[k] if k == n else 2 * width[k]
                drop = dropout and 5 <= k < n and k >= n - 3  # the 3 wide blocks next to the innermost
                dec.append(Up(cin, width[k - 1], make_norm(self.placement[ds - 1], width[k - 1]), drop))
        self.encoders = nn.ModuleList(enc)
        self.decoders = nn.ModuleList(dec)
        self.attention_levels = (2, 3, 4) if attention else ()
        self.attention = nn.ModuleDict({str(k): Attention(2 * width[k - 1]) for k in self.attention_levels})
        self._slots = slots

    # -- introspection -------------------------------------------------------------------------
    def slot_layers(self) -> dict[int, list[nn.Module]]:
        """Slot number -> normalization layers it controls (empty list: no layer at this size)."""
        out: dict[int, list[nn.Module]] = {i: [] for i in range(1, NUM_SLOTS + 1)}
        for k, (es, ds) in self._slots.items():
            if es is not None:
                out[es].append(self.encoders[k - 1].norm)
            out[ds].append(self.decoders[k - 1].norm)
        return out

    # -- forward --------------------------------------------------------------------------------
    def forward(self, composite: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        check_inputs(composite, mask, self.image_size_multiple)
        pyramid = MaskPyramid(mask)
        x = torch.cat([composite, mask.to(composite.dtype)], 1) if self.input_nc == 4 else composite
        skips = []
        for enc in self.encoders:
            x = enc(x, pyramid)
            skips.append(x)
        n = self.num_blocks
        y = skips[-1]
        for k in range(n, 0, -1):
            y = self.decoders[k - 1](y, pyramid)
            if k > 1:
                skip = F.leaky_relu(skips[k - 2], 0.2) if self.skip_activation else skips[k - 2]
                y = torch.cat([skip, y], 1)  # block k's output
                if str(k) in self.attention:
                    y = self.attention[str(k)](y)
        pred, transform = self.head(y, composite, mask)
        out = paste_back(pred, composite, mask)
        if return_aux:
            return out, {"pred": pred, "transform": transform, "mask_resizes": pyramid.resizes}
        return out
