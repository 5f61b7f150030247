"""Registry: every name builds, arguments are validated, the default params' model sections build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.config import load_params
from components.models import MODELS, build_model, register
from components.models.registry import allowed_arguments

SMALL = {
    "rainnet": {"ngf": 2, "image_size": 32},
    "dih": {"ngf": 2, "image_size": 32},
    "dih_rain": {"ngf": 2, "image_size": 32},
    "global_d": {"ndf": 2},
    "domain_d": {"ndf": 2},
}


def test_every_contract_name_builds():
    build_model({"name": "rainnet", "ngf": 2, "image_size": 32})  # also triggers registration
    assert {"rainnet", "dih", "dih_rain", "global_d", "domain_d"} <= set(MODELS)
    img, mask = torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    mask[..., :16] = 0
    for name, kwargs in SMALL.items():
        model = build_model({"name": name, **kwargs})
        if name in ("global_d",):
            assert model(img).dim() == 4
        elif name == "domain_d":
            assert model(img, mask).shape == (1,)
        else:
            assert model(img, mask).shape == img.shape
            assert model.image_size_multiple == (32 if name == "rainnet" else 8)


def test_unknown_argument_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match="'ngff'.*allowed: placement, ngf, input_nc, image_size"):
        build_model({"name": "rainnet", "ngff": 8})
    assert "mask_head" in allowed_arguments("dih")


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown model name 'unet'.*rainnet"):
        build_model({"name": "unet"})
    with pytest.raises(ValueError, match="no 'name'"):
        build_model({"ngf": 4})
    with pytest.raises(ValueError, match="mapping"):
        build_model("rainnet")
    with pytest.raises(ValueError, match="placement"):
        build_model({"name": "rainnet", "placement": "rain-9", "image_size": 32})
    with pytest.raises(ValueError, match="already registered"):
        register("rainnet")(lambda: None)


def test_spec_is_not_mutated_and_default_params_build():
    spec = {"name": "rainnet", "ngf": 2, "image_size": 32}
    build_model(spec)
    assert spec == {"name": "rainnet", "ngf": 2, "image_size": 32}
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for section in (params.model.generator, params.model.discriminator, params.model.domain_discriminator):
        assert isinstance(build_model(dict(section)), torch.nn.Module)


def test_no_import_cycle_through_the_registry():
    """The registry imports the model modules; none of them (nor anything they import) imports it back."""
    import ast

    folder = Path(__file__).resolve().parents[1] / "components" / "models"
    for path in folder.glob("*.py"):
        if path.name in ("registry.py", "__init__.py"):
            continue
        imported = {
            node.module or ""
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
        }
        assert not {m for m in imported if m.endswith("registry")}, f"{path.name} imports the registry"
