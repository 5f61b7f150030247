"""Pure-PyTorch models (no I/O): RAIN, RainNet, DIH, discriminators, losses, init, registry."""

from .rain import RAIN, MaskPyramid, rain_normalize
from .rainnet import PLACEMENTS, RainNet, paste_back, resolve_placement
from .registry import MODELS, build_model, register

__all__ = [
    "MODELS",
    "PLACEMENTS",
    "RAIN",
    "MaskPyramid",
    "RainNet",
    "build_model",
    "paste_back",
    "rain_normalize",
    "register",
    "resolve_placement",
]
