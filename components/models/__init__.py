"""Pure-PyTorch models (no I/O): RAIN, RainNet, DIH, discriminators, losses, init, registry."""

from .dih import DIHGenerator, dih, dih_rain
from .discriminators import DomainDiscriminator, DomainEncoder, GlobalDiscriminator, PartialConv2d
from .init import init_weights
from .losses import (
    d_hinge_loss,
    discriminator_objective,
    domain_d_loss,
    domain_g_loss,
    g_hinge_loss,
    generator_objective,
    gradient_penalty,
    l1_loss,
)
from .rain import RAIN, MaskPyramid, rain_normalize
from .rainnet import PLACEMENTS, RainNet, paste_back, resolve_placement
from .registry import MODELS, allowed_arguments, build_model, register

__all__ = [
    "MODELS",
    "PLACEMENTS",
    "RAIN",
    "DIHGenerator",
    "DomainDiscriminator",
    "DomainEncoder",
    "GlobalDiscriminator",
    "MaskPyramid",
    "PartialConv2d",
    "RainNet",
    "allowed_arguments",
    "build_model",
    "d_hinge_loss",
    "dih",
    "dih_rain",
    "discriminator_objective",
    "domain_d_loss",
    "domain_g_loss",
    "g_hinge_loss",
    "generator_objective",
    "gradient_penalty",
    "init_weights",
    "l1_loss",
    "paste_back",
    "rain_normalize",
    "register",
    "resolve_placement",
]
