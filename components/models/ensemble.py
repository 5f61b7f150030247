"""Wrappers around a generator: ``Ensemble`` (several trained side by side), ``FlipAverage`` (the mirror
image's answer averaged in) and ``DeadZone`` (small corrections left out).

On a few thousand scenes one network's colour transform is noisy: two networks trained the same way
disagree on an unseen scene about as much as each misses, and so do a network's answers for a composite
and for its mirror image. Averaging those answers cuts that noise (lalonde test: one affine network
0.68 of the composite's fMSE, with its mirror 0.65, two networks with their mirrors 0.63;
benchmarks/quality.json). Both wrappers average what the head predicts, before the background is pasted
back: the colour transform of a transform head (so the result still applies at any resolution) or the
image of the ``image`` head.

* ``Ensemble(members)``: every member sees the same batch but is trained on its own loss (``aux
  ["members"]`` in training mode; ``engine.train_step`` averages the members' losses), so the members stay
  independent networks, not one wider one.
* ``FlipAverage(model)``: at inference only, the model's answer for the composite and for its mirror
  (flipped back); in training mode it is the bare model (training already flips at random).

* ``DeadZone(model, tau)``: at inference only, the final colour transform ``t`` (after averaging and the
  strength) shrunk towards the identity, ``t * max(0, 1 - tau / |t|)`` (``|t|``: the transform's
  root-mean-square norm over its pixels): a composite the network would barely change is left as it is,
  and every larger correction loses the same ``tau``. A network trained on fMSE tends to nudge already
  harmonious composites (their fMSE is small, so any nudge is a large share of it); ``tau`` is fitted on
  the val split with the strength (components/training/calibrate.py).

``build_model`` makes them from the generator spec's ``members``, ``tta`` and ``deadzone`` keys
(registry.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import apply_transform
from .rainnet import paste_back


def average_outputs(results: list[tuple[torch.Tensor, dict]], composite: torch.Tensor, mask: torch.Tensor):
    """``(out, aux)`` of several forward passes over the same composite -> one ``(out, aux)``.

    Transform heads: the mean transform, applied to the composite; the ``image`` head: the mean image.
    """
    auxes = [a for _, a in results]
    transforms = [a.get("transform") for a in auxes]
    if transforms[0] is not None:
        transform = torch.stack([t.float() for t in transforms]).mean(0)
        pred = apply_transform(transform, composite).to(composite.dtype)
    else:
        transform = None
        pred = torch.stack([a["pred"].float() for a in auxes]).mean(0).to(composite.dtype)
    aux = {"pred": pred, "transform": transform, "mask_resizes": auxes[0].get("mask_resizes", 0)}
    if auxes[0].get("mask_logits") is not None:  # DIH's segmentation head
        aux["mask_logits"] = torch.stack([a["mask_logits"].float() for a in auxes]).mean(0)
    return paste_back(pred, composite, mask), aux


class _Wrapper(nn.Module):
    """What callers read off a generator (``head``, ``image_size_multiple``, ...) comes from the inner one."""

    def first(self) -> nn.Module:
        raise NotImplementedError

    @property
    def head(self):
        return self.first().head

    @property
    def image_size_multiple(self) -> int:
        return self.first().image_size_multiple

    @property
    def image_size(self) -> int:
        return self.first().image_size


class Ensemble(_Wrapper):
    """Several generators of one spec; their predictions averaged (each trained on its own loss)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def first(self) -> nn.Module:
        return self.members[0]

    def forward(self, composite: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        results = [m(composite, mask, return_aux=True) for m in self.members]
        out, aux = average_outputs(results, composite, mask)
        if self.training:
            aux["members"] = results
        return (out, aux) if return_aux else out


def _rows(v, start: int, stop: int):
    """Samples ``start:stop`` of a batched aux entry (tensors with a batch dimension; others as they are)."""
    return v[start:stop] if torch.is_tensor(v) and v.dim() >= 1 else v


def _flip(v):
    return v.flip(-1) if torch.is_tensor(v) and v.dim() == 4 else v


class FlipAverage(_Wrapper):
    """Test-time augmentation: the average of the answers for the composite and its mirror image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def first(self) -> nn.Module:
        return self.model

    def forward(self, composite: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        if self.training:
            return self.model(composite, mask, return_aux=return_aux)
        # one forward pass over the batch and its mirror (every sample is normalized on its own, so
        # this is the two passes' answer, in one call: ~15 % faster on CPU at 64x64)
        n = composite.shape[0]
        both, aux_both = self.model(torch.cat([composite, composite.flip(-1)]), torch.cat([mask, mask.flip(-1)]),
                                    return_aux=True)  # fmt: skip
        plain = (both[:n], {k: _rows(v, 0, n) for k, v in aux_both.items()})
        back = {k: _flip(_rows(v, n, 2 * n)) for k, v in aux_both.items()}
        out, aux = average_outputs([plain, (both[n:].flip(-1), back)], composite, mask)
        return (out, aux) if return_aux else out


def shrink(transform: torch.Tensor, tau: float) -> torch.Tensor:
    """A (B, 12, h, w) transform moved ``tau`` towards the identity (zero), by its per-image RMS norm."""
    if tau <= 0:
        return transform
    norm = transform.float().square().sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True).sqrt()
    return transform * (1.0 - tau / norm.clamp_min(1e-12)).clamp_min(0.0).to(transform.dtype)


class DeadZone(_Wrapper):
    """A transform-head generator whose final transform is shrunk by ``tau`` at inference (``shrink``).

    It holds no weights of its own: its state dict is the inner generator's (same keys), so a generator
    file of a spec with a dead zone loads into the spec without one and back.
    """

    def __init__(self, module: nn.Module, tau: float):
        super().__init__()
        self.module = module
        self.tau = float(tau)

    def first(self) -> nn.Module:
        return self.module

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, composite: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        if self.training:
            return self.module(composite, mask, return_aux=return_aux)
        out, aux = self.module(composite, mask, return_aux=True)
        transform = aux.get("transform")
        if transform is not None:
            transform = shrink(transform.float(), self.tau)
            pred = apply_transform(transform, composite).to(composite.dtype)
            out, aux = paste_back(pred, composite, mask), {**aux, "pred": pred, "transform": transform}
        return (out, aux) if return_aux else out
