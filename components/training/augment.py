"""Scene colour augmentation: one random global colour change applied to a composite and its real alike.

A model trained on a few thousand photos learns the true colours of each training object and stops
looking at the background (the training loss falls while the validation fMSE stalls). Re-lighting the
whole scene (exposure, white balance, gamma, saturation), the same way for the composite and the real
photo, makes every photo a new scene each epoch: the pair stays consistent (background identical in
both, the foreground still off by a colour transform), but the absolute colours carry no answer.
"""

from __future__ import annotations

import torch

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def scene_colour_jitter(
    composite: torch.Tensor, real: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random global colour change for ``composite`` and ``real`` (B, 3, H, W) in [-1, 1].

    ``strength`` in [0, 1] scales every range (0: no change): exposure up to +-1 stop, channel gains
    up to +-25 %, gamma in [2^-0.5, 2^0.5], saturation in [0.5, 1.5] at strength 1.
    """
    if strength <= 0:
        return composite, real
    b = composite.shape[0]

    def u(*shape):  # uniform in [-1, 1]
        return torch.rand(*shape, generator=generator) * 2 - 1

    gain = 2.0 ** (strength * u(b, 1, 1, 1)) * (1 + 0.25 * strength * u(b, 3, 1, 1))
    gamma = 2.0 ** (0.5 * strength * u(b, 1, 1, 1))
    sat = 1 + 0.5 * strength * u(b, 1, 1, 1)
    params = [p.to(composite.device) for p in (gain, gamma, sat)]

    def apply(x: torch.Tensor) -> torch.Tensor:
        g, gm, s = params
        y = ((x.float() + 1) / 2 * g).clamp(0, 1) ** gm
        grey = (y * _LUMA.to(y.device)[None, :, None, None]).sum(1, keepdim=True)
        y = (grey + (y - grey) * s).clamp(0, 1)
        return (y * 2 - 1).to(x.dtype)

    return apply(composite), apply(real)


def identity_pairs(
    composite: torch.Tensor, real: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace a random ``fraction`` of the composites by their real photo (target: change nothing).

    A harmonizer sees many composites that are nearly right; trained only on visibly shifted ones it
    learns to always move the foreground, and harms the harmonious ones. Identity pairs teach it to
    tell the two apart and leave a harmonious image alone.
    """
    if fraction <= 0:
        return composite
    pick = (torch.rand(composite.shape[0], generator=generator) < fraction).to(composite.device)
    return torch.where(pick[:, None, None, None], real, composite)
