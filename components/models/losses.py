"""Training objectives (RAINNET.md section 4): hinge adversarial, domain verification, L1, gradient penalty."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """D side: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``."""
    return F.relu(1.0 - real_scores.float()).mean() + F.relu(1.0 + fake_scores.float()).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """G side: ``-mean(D(fake))``."""
    return -fake_scores.float().mean()


def domain_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Domain verification, D_v side (eq. 6): hinge with real images positive, harmonized negative."""
    return d_hinge_loss(real_scores, fake_scores)


def domain_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Domain verification, G side (eq. 7): ``-mean(D_v(G(I_c, M), M))``."""
    return g_hinge_loss(fake_scores)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (eq. 2), on the pasted output."""
    return (pred.float() - target.float()).abs().mean()


def fn_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_area: float = 100.0):
    """Foreground-normalized MSE (Sofiiuk et al., WACV 2021): the squared error summed over the
    foreground / (3 x max(foreground area, ``min_area``)), averaged over images. It is the fMSE the
    project reports, so small objects count as much as large ones and the background (pasted back,
    error 0) does not dilute the loss. ``min_area`` is in pixels of the training size."""
    se = ((pred.float() - target.float()) ** 2 * mask.float()).sum(dim=(1, 2, 3))
    area = mask.float().sum(dim=(1, 2, 3)).clamp_min(min_area)
    return (se / (3.0 * area)).mean()


RECONSTRUCTION_LOSSES = ("l1", "fn_mse")


def reconstruction_loss(kind: str, pred, target, mask, min_area: float = 100.0) -> torch.Tensor:
    """The pixel loss of the G objective: ``l1`` (the paper) or ``fn_mse`` (foreground-normalized)."""
    if kind == "l1":
        return l1_loss(pred, target)
    if kind == "fn_mse":
        return fn_mse_loss(pred, target, mask, min_area)
    raise ValueError(f"unknown loss {kind!r}; known: {', '.join(RECONSTRUCTION_LOSSES)}")


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *critic_args: torch.Tensor,
    weight: float = 10.0,
) -> torch.Tensor:
    """``weight * E[(||grad critic(x_hat)|| - 1)^2]`` on random interpolates of real and fake (WGAN-GP).

    ``critic_args`` are extra inputs (e.g. the mask for the domain D). ``weight = 0`` costs nothing.
    """
    if weight == 0:
        return real.new_zeros((), dtype=torch.float32)
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat, *critic_args)
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).float().norm(2, dim=1)
    return weight * ((norms - 1.0) ** 2).mean()


def generator_objective(
    l1: torch.Tensor,
    adv: torch.Tensor | None = None,
    verification: torch.Tensor | None = None,
    lambda_adv: float = 1.0,
    lambda_v: float = 1.0,
    lambda_l1: float = 100.0,
) -> torch.Tensor:
    """Eq. 9: ``lambda_adv * L_adv + lambda_v * L_v + lambda_l1 * L1`` (terms given as None are left out)."""
    total = lambda_l1 * l1
    if adv is not None:
        total = total + lambda_adv * adv
    if verification is not None:
        total = total + lambda_v * verification
    return total


def discriminator_objective(
    adv: torch.Tensor,
    verification: torch.Tensor | None = None,
    gp: torch.Tensor | None = None,
    lambda_adv: float = 1.0,
    lambda_v: float = 1.0,
) -> torch.Tensor:
    """Eq. 8 (+ the gradient penalty when given): ``lambda_adv * L_adv + lambda_v * L_v + gp``."""
    total = lambda_adv * adv
    if verification is not None:
        total = total + lambda_v * verification
    if gp is not None:
        total = total + gp
    return total
