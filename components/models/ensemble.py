"""Averaging wrappers around a generator: ``Ensemble`` (several trained side by side) and ``FlipAverage``.

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

``build_model`` makes them from the generator spec's ``members`` and ``tta`` keys (registry.py).
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
        plain = self.model(composite, mask, return_aux=True)
        out_m, aux_m = self.model(composite.flip(-1), mask.flip(-1), return_aux=True)
        back = {k: (v.flip(-1) if torch.is_tensor(v) and v.dim() == 4 else v) for k, v in aux_m.items()}
        out, aux = average_outputs([plain, (out_m.flip(-1), back)], composite, mask)
        return (out, aux) if return_aux else out
