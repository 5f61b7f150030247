"""Model registry: ``build_model({"name": ..., **kwargs})`` builds any generator or discriminator.

Specs come from ``params.yaml`` (``model.generator`` etc.), so arguments are checked against the
builder's signature: a typo must fail with the allowed keys listed, never be silently ignored.
Three keys of a generator spec are not the builder's: ``members`` (several networks of the spec trained
side by side, their predictions averaged) and ``tta`` (``flip``: average with the mirror image at
inference), see ensemble.py; ``strength`` (a transform head's correction scaled) and ``deadzone`` (its
small corrections left out: ``DeadZone``), both fitted on the val split after training
(components/training/calibrate.py).

The registry imports the model modules and names their builders here; the model modules never import
it (no import cycle). ``register`` adds a builder from elsewhere (an experiment, a test).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .dih import dih, dih_rain
from .discriminators import DomainDiscriminator, GlobalDiscriminator
from .ensemble import DeadZone, Ensemble, FlipAverage
from .heads import OutputHead
from .rainnet import RainNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "rainnet": RainNet,
    "dih": dih,
    "dih_rain": dih_rain,
    "global_d": GlobalDiscriminator,
    "domain_d": DomainDiscriminator,
}


WRAPPER_KEYS = ("members", "tta", "strength", "deadzone")
TTA_MODES = ("none", "flip")


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a builder (class or function) available as ``name`` in :data:`MODELS`."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return deco


def allowed_arguments(name: str) -> list[str]:
    """The keyword arguments the builder ``name`` accepts."""
    return [p for p in inspect.signature(MODELS[name]).parameters if p not in ("self", "args", "kwargs")]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build ``spec["name"]`` with the other keys as keyword arguments (validated, ``ValueError`` if not)."""
    if not isinstance(spec, dict):
        raise ValueError(f"model spec must be a mapping with a 'name' key, got {spec!r}")
    if "name" not in spec:
        raise ValueError(f"model spec {spec!r} has no 'name'; known models: {', '.join(sorted(MODELS))}")
    name = spec["name"]
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(sorted(MODELS))}")
    kwargs = {k: v for k, v in spec.items() if k not in ("name", *WRAPPER_KEYS)}
    allowed = allowed_arguments(name)
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"model {name!r} has no argument {key!r}; allowed: {', '.join(allowed + list(WRAPPER_KEYS))}"
            )
    members = spec.get("members", 1)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"model {name!r}: members must be a positive integer, got {members!r}")
    tta = spec.get("tta", "none")
    if tta not in TTA_MODES:
        raise ValueError(f"model {name!r}: unknown tta {tta!r}; known: {', '.join(TTA_MODES)}")
    strength = spec.get("strength", 1.0)
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 4:
        raise ValueError(f"model {name!r}: strength must be a number in (0, 4], got {strength!r}")
    if strength != 1.0 and spec.get("head", "image") == "image":
        raise ValueError(f"model {name!r}: strength scales a colour transform; the image head has none")
    deadzone = spec.get("deadzone", 0.0)
    if isinstance(deadzone, bool) or not isinstance(deadzone, int | float) or not 0 <= deadzone < 1:
        raise ValueError(f"model {name!r}: deadzone must be a number in [0, 1), got {deadzone!r}")
    if deadzone and spec.get("head", "image") == "image":
        raise ValueError(f"model {name!r}: deadzone shrinks a colour transform; the image head has none")
    model = MODELS[name](**kwargs)
    if members > 1:
        model = Ensemble([model] + [MODELS[name](**kwargs) for _ in range(members - 1)])
    for head in (m for m in model.modules() if isinstance(m, OutputHead)):
        head.strength = float(strength)  # not a weight: the spec carries it, so state dicts stay as trained
    if tta == "flip":
        model = FlipAverage(model)
    return DeadZone(model, deadzone) if deadzone else model
