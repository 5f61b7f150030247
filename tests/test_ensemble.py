"""Averaging wrappers (``members`` and ``tta: flip`` in a generator spec): what they average, that they
keep the heads' guarantees, that members train as independent networks, and that they serve."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from components.checkpoint import load_generator, save_generator
from components.config import load_params
from components.inference.predictor import Predictor
from components.models import build_model, init_weights
from components.models.ensemble import Ensemble, FlipAverage
from components.models.heads import HEADS
from components.training import engine
from tests.test_heads import FAMILIES, SIZE, batch, disc_mask, last_layer, perturb
from tests.train.conftest import REPO, TINY


def wrapped(family: str, head: str, members: int = 2, tta: str = "flip", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = {**FAMILIES[family], "head": head, "image_size": SIZE, "members": members, "tta": tta}
    return init_weights(build_model(spec))


def members_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = model.model if isinstance(model, FlipAverage) else model
    return list(inner.members) if isinstance(inner, Ensemble) else [inner]


def perturb_all(model: torch.nn.Module) -> torch.nn.Module:
    """Every member off its identity start, each differently (as independently trained networks are)."""
    for i, m in enumerate(members_of(model)):
        perturb(m, seed=10 + i)
    return model.eval()


def mirror_asymmetric_batch():
    comp, mask = batch(n=2, seed=5)  # the mask rectangle is off-centre: its mirror is another mask
    return comp, mask


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_wrapped_generators_start_as_the_identity_and_keep_the_background(family, head):
    model = wrapped(family, head).eval()
    assert isinstance(model, FlipAverage) and isinstance(model.model, Ensemble)
    assert model.head.head == head and model.image_size_multiple == members_of(model)[0].image_size_multiple
    comp, mask = batch()
    with torch.no_grad():
        out, aux = model(comp, mask, return_aux=True)
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out[bg], comp[bg])
    if head != "image":
        assert torch.count_nonzero(aux["transform"]) == 0
        assert torch.equal(out, comp)
    perturb_all(model)
    with torch.no_grad():
        out = model(comp, mask)
    assert torch.equal(out[bg], comp[bg])
    assert not torch.equal(out, comp)


@pytest.mark.parametrize("head", HEADS)
def test_the_ensemble_is_the_mean_of_its_members(head):
    model = perturb_all(wrapped("rainnet", head, members=3, tta="none"))
    comp, mask = batch(seed=2)
    with torch.no_grad():
        out, aux = model(comp, mask, return_aux=True)
        each = [m(comp, mask, return_aux=True)[1] for m in model.members]
    key = "pred" if head == "image" else "transform"
    mean = torch.stack([a[key] for a in each]).mean(0)
    assert torch.allclose(aux[key], mean, atol=1e-6)
    assert not torch.allclose(each[0][key], each[1][key])  # the members really differ
    bg = mask.expand_as(comp) == 0
    assert torch.equal(out[bg], comp[bg])


@pytest.mark.parametrize("head", HEADS)
def test_flip_average_answers_a_mirrored_composite_with_the_mirrored_answer(head):
    model = perturb_all(wrapped("rainnet", head, members=1, tta="flip"))
    bare = model.model
    comp, mask = mirror_asymmetric_batch()
    with torch.no_grad():
        out = model(comp, mask)
        out_mirror = model(comp.flip(-1), mask.flip(-1))
        plain = bare(comp, mask)
    assert torch.allclose(out_mirror.flip(-1), out, atol=1e-5)
    assert not torch.allclose(plain, out, atol=1e-3)  # the bare network is not mirror-symmetric
    model.train()  # training sees the bare network: augmentation flips at random already
    with torch.no_grad():
        assert torch.equal(model(comp, mask), bare(comp, mask))


def test_members_train_on_their_own_loss_like_networks_trained_alone():
    """One engine step of a 2-member ensemble gives member 0 the gradient of the same network alone."""
    p = load_params(
        REPO / "params.yaml",
        [*TINY, "train.colour_jitter=0", "train.identity_fraction=0", "model.generator.dropout=false",
         "model.generator.head=affine", "model.generator.members=2", "model.generator.tta=none",
         "train.lr=0.01"],
    )  # fmt: skip
    spec = engine.generator_spec(p.model.generator, 32)
    state = engine.build_state(p, spec)
    perturb_all(state.generator)
    single = copy.deepcopy(state.generator.members[0])
    alone = engine.build_state(p, {**spec, "members": 1})
    alone.generator.load_state_dict(single.state_dict())

    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:24, 4:20] = 1
    data = {
        "composite": torch.where(mask > 0, (real * 0.6 + 0.3).clamp(-1, 1), real),
        "mask": mask,
        "real": real,
    }
    logs = engine.train_step(state, data, p.train, "cpu")
    engine.train_step(alone, data, p.train, "cpu")

    assert logs and np.isfinite(logs["loss_g"])
    # The gradient member 0 got is the one it gets alone, over the members' count (the losses are
    # averaged): nothing of member 1's answer reaches it.
    grads = dict(state.generator.members[0].named_parameters())
    compared = 0
    for name, p_alone in alone.generator.named_parameters():
        if p_alone.grad is None:
            continue
        assert torch.allclose(grads[name].grad * 2, p_alone.grad, rtol=1e-4, atol=1e-9), name
        compared += 1
    assert compared > 10
    assert not torch.equal(last_layer(state.generator.members[0]).weight, last_layer(single).weight)


def test_a_saved_ensemble_serves_through_the_predictor_at_any_size(tmp_path):
    model = perturb_all(wrapped("rainnet", "pct", members=2, tta="flip"))
    spec = {**FAMILIES["rainnet"], "head": "pct", "image_size": SIZE, "members": 2, "tta": "flip"}
    path = tmp_path / "generator.pt"
    save_generator(str(path), model, spec, SIZE)
    loaded, info = load_generator(str(path))
    assert isinstance(loaded, FlipAverage) and info["spec"]["members"] == 2

    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (150, 211, 3), dtype=np.uint8)
    mask = disc_mask(150, 211)
    out = Predictor(loaded, SIZE, device="cpu")(comp, mask)
    assert np.array_equal(out, Predictor(model, SIZE, device="cpu")(comp, mask))
    assert np.array_equal(out[mask == 0], comp[mask == 0])
    assert (out[mask == 255] != comp[mask == 255]).any()


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"members": 0}, "members must be a positive integer"), ({"tta": "rotate"}, "unknown tta 'rotate'")],
)
def test_a_bad_wrapper_key_is_a_clear_error(extra, message):
    with pytest.raises(ValueError, match=message):
        build_model({**FAMILIES["rainnet"], "image_size": SIZE, **extra})
