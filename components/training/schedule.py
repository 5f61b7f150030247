"""Learning-rate schedule of the RainNet authors: constant for ``epochs``, then linear decay to zero.

Stepped once per epoch. Kept as a pure function of the epoch index so a resumed run (whose epoch counts
may have been raised) recomputes the same factor from the params instead of trusting pickled closures.
"""

from __future__ import annotations

import torch


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """Multiplier of the base lr during 0-based ``epoch``: 1 for the first ``epochs``, then linear to 0.

    The last decay epoch still trains with a small positive lr (``1 / (decay_epochs + 1)``), as in pix2pix.
    """
    if epoch < epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs + 1) / float(decay_epochs + 1))


def make_scheduler(optimizer: torch.optim.Optimizer, epochs: int, decay_epochs: int):
    """A ``LambdaLR`` over :func:`lr_factor`; call ``step()`` once after each epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, epochs, decay_epochs))
