"""DIH (Tsai et al. 2017) and DIH + RAIN (RAINNET.md section 3), both predicting the foreground with paste-back.

DIH: a conv encoder (BatchNorm) with skip connections into a harmonization decoder (BatchNorm), plus an
optional second decoder sharing the encoder. The original's second decoder does scene parsing; we have
no parsing labels, so here it predicts the foreground mask (logits), which a trainer can supervise or
switch off (``mask_head=False``). Unlike the original, the parsing features are not fed into the
harmonization decoder: the two heads only share the encoder.

DIH + RAIN: InstanceNorm in the encoder, RAIN in the harmonization decoder (the mask head keeps BN).

The encoder stops at 4x4 (``log2(image_size) - 2`` stride-2 convs, width ``ngf * min(2**(k-1), 8)``);
the input is the composite and the mask (``input_nc=4``, as in DIH) or the composite only (3).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .heads import OutputHead, head_channels, mark_zero_init
from .rain import RAIN, MaskPyramid
from .rainnet import apply_norm, check_inputs, paste_back

MIN_IMAGE_SIZE = 32


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "rain":
        return RAIN(channels)
    raise ValueError(f"unknown norm {kind!r}")


class _Block(nn.Module):
    """(transposed) conv 4x4 s2 -> [norm] -> activation."""

    def __init__(self, conv: nn.Module, norm: nn.Module | None, act: nn.Module):
        super().__init__()
        self.conv, self.norm, self.act = conv, norm if norm is not None else nn.Identity(), act

    def forward(self, x: torch.Tensor, pyramid: MaskPyramid) -> torch.Tensor:
        return self.act(apply_norm(self.norm, self.conv(x), pyramid))


def _decoder(width: list[int], n: int, norm: str, out_nc: int) -> nn.ModuleList:
    """Blocks d_n .. d_1 (index k-1): d_k maps block k+1's output (or e_n's) to width[k-1] channels."""
    blocks = []
    for k in range(1, n + 1):
        cin = width[k] if k == n else 2 * width[k]
        if k == 1:
            blocks.append(_Block(nn.ConvTranspose2d(cin, out_nc, 4, 2, 1), None, nn.Identity()))
        else:
            conv = nn.ConvTranspose2d(cin, width[k - 1], 4, 2, 1, bias=False)
            blocks.append(_Block(conv, _norm(norm, width[k - 1]), nn.ReLU()))
    return nn.ModuleList(blocks)


def _decode(blocks: nn.ModuleList, feats: list[torch.Tensor], pyramid: MaskPyramid) -> torch.Tensor:
    y = feats[-1]
    for k in range(len(blocks), 0, -1):
        y = blocks[k - 1](y, pyramid)
        if k > 1:
            y = torch.cat([feats[k - 2], y], 1)
    return y


class DIHGenerator(nn.Module):
    """Encoder + harmonization decoder (+ mask head). ``forward(composite, mask, return_aux=False)``."""

    def __init__(
        self,
        encoder_norm: str = "bn",
        decoder_norm: str = "bn",
        ngf: int = 64,
        input_nc: int = 4,
        image_size: int = 256,
        mask_head: bool = True,
        head: str = "image",
    ):
        super().__init__()
        self.head = OutputHead(head)
        if input_nc not in (3, 4):
            raise ValueError(f"input_nc must be 3 (composite) or 4 (composite + mask), got {input_nc!r}")
        if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= {MIN_IMAGE_SIZE}, got {image_size!r}")
        self.ngf, self.input_nc, self.image_size = ngf, input_nc, image_size
        n = self.num_blocks = int(math.log2(image_size)) - 2
        self.image_size_multiple = 2**n
        width = [input_nc] + [ngf * min(2 ** (k - 1), 8) for k in range(1, n + 1)]
        self.encoder = nn.ModuleList(
            _Block(
                nn.Conv2d(width[k - 1], width[k], 4, 2, 1, bias=k == 1),
                _norm(encoder_norm, width[k]) if k > 1 else None,
                nn.LeakyReLU(0.2),
            )
            for k in range(1, n + 1)
        )
        self.decoder = _decoder(width, n, decoder_norm, head_channels(head))
        if head != "image":
            mark_zero_init(self.decoder[0].conv)
        self.mask_decoder = _decoder(width, n, "bn", 1) if mask_head else None

    def forward(self, composite: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        check_inputs(composite, mask, self.image_size_multiple)
        pyramid = MaskPyramid(mask)
        x = torch.cat([composite, mask.to(composite.dtype)], 1) if self.input_nc == 4 else composite
        feats = []
        for block in self.encoder:
            x = block(x, pyramid)
            feats.append(x)
        pred, transform = self.head(_decode(self.decoder, feats, pyramid), composite, mask)
        out = paste_back(pred, composite, mask)
        if not return_aux:
            return out
        aux = {"pred": pred, "transform": transform}
        if self.mask_decoder is not None:
            aux["mask_logits"] = _decode(self.mask_decoder, feats, pyramid).to(composite.dtype)
        return out, aux


def dih(
    ngf: int = 64, input_nc: int = 4, image_size: int = 256, mask_head: bool = True, head: str = "image"
) -> DIHGenerator:
    """DIH as published: BatchNorm in the encoder and both decoders."""
    return DIHGenerator("bn", "bn", ngf, input_nc, image_size, mask_head, head)


def dih_rain(
    ngf: int = 64, input_nc: int = 4, image_size: int = 256, mask_head: bool = True, head: str = "image"
) -> DIHGenerator:
    """DIH + RAIN: InstanceNorm in the encoder, RAIN in the harmonization decoder."""
    return DIHGenerator("in", "rain", ngf, input_nc, image_size, mask_head, head)
