"""Losses on values that can be checked by hand."""

from __future__ import annotations

import pytest
import torch

from components.models import (
    d_hinge_loss,
    discriminator_objective,
    domain_d_loss,
    domain_g_loss,
    g_hinge_loss,
    generator_objective,
    gradient_penalty,
    l1_loss,
)


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2  -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2    -> mean 1
    assert d_hinge_loss(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert g_hinge_loss(torch.tensor([-2.0, 0.0, 3.0])).item() == pytest.approx(-1 / 3)
    assert domain_d_loss(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert domain_g_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)
    # confident, correct discriminator: zero loss
    assert d_hinge_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_l1_and_objectives():
    pred = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert l1_loss(pred, target).item() == pytest.approx((1 + 0 + 2 + 1) / 4)
    l1, adv, v = torch.tensor(0.25), torch.tensor(-0.5), torch.tensor(0.75)
    assert generator_objective(l1, adv, v).item() == pytest.approx(-0.5 + 0.75 + 25.0)
    assert generator_objective(l1).item() == pytest.approx(25.0)
    assert generator_objective(l1, adv, v, lambda_adv=2, lambda_v=0, lambda_l1=1).item() == pytest.approx(
        -0.75
    )
    assert discriminator_objective(torch.tensor(1.5), torch.tensor(0.5)).item() == pytest.approx(2.0)
    assert discriminator_objective(torch.tensor(1.5), None, gp=torch.tensor(3.0)).item() == pytest.approx(4.5)


def test_gradient_penalty_of_a_linear_critic():
    # critic(x) = <w, x> has gradient w everywhere: penalty = weight * (|w| - 1)^2 whatever the mix.
    w = torch.zeros(2, 3, 2, 2)
    w[:, 0, 0, 0], w[:, 1, 1, 1], w[:, 2, 0, 1] = 2.0, 2.0, 1.0  # |w_i| = 3 per sample

    def critic(x):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    assert gradient_penalty(critic, real, fake, weight=10.0).item() == pytest.approx(40.0)
    assert gradient_penalty(critic, real, fake, weight=0.0).item() == 0.0


def test_gradient_penalty_passes_extra_inputs_and_is_differentiable():
    lin = torch.nn.Linear(4, 1)

    def critic(x, scale):
        return lin(x * scale).squeeze(1)

    real, fake = torch.randn(3, 4), torch.randn(3, 4)
    gp = gradient_penalty(critic, real, fake, torch.full((3, 4), 2.0), weight=1.0)
    gp.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    expected = (2 * lin.weight.detach().norm() - 1) ** 2
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)
