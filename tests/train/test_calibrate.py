"""The strength of a transform head's correction, fitted on val after training (``train.calibrate``)."""

from __future__ import annotations

import pytest
import torch

from components.models import build_model, init_weights
from components.training.calibrate import STRENGTHS, fit_strength

SPEC = {"name": "rainnet", "placement": "rain-decoder", "ngf": 4, "image_size": 32, "head": "affine"}


def cautious_model(shift: float, **spec) -> torch.nn.Module:
    """An affine model whose transform adds ``shift`` to every channel (its last layer's bias)."""
    torch.manual_seed(0)
    model = init_weights(build_model({**SPEC, **spec}))
    for m in model.modules():
        if hasattr(m, "decoders"):
            with torch.no_grad():
                m.decoders[0].conv.bias[9:12] = shift
    return model.eval()


def batches(offset: float, n: int = 3) -> list[dict]:
    """Composites whose foreground is the real one minus ``offset`` (a pure shift to undo)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        real = torch.rand(4, 3, 32, 32, generator=g) * 1.2 - 0.6
        mask = torch.zeros(4, 1, 32, 32)
        mask[:, :, 6:22, 10:26] = 1
        out.append({"composite": torch.where(mask > 0, real - offset, real), "mask": mask, "real": real})
    return out


def test_the_fitted_strength_undoes_a_cautious_correction():
    """The model corrects 0.2 of a 0.25 shift: 1.25 times its correction is the real foreground."""
    model = cautious_model(0.2)
    data = batches(0.25)
    best, table = fit_strength(model, data)
    assert best == 1.25 and set(table) == set(STRENGTHS)
    assert table[1.25] < 1.0 < table[1.0]  # fMSE on 0..255: rounding only, against a visible miss

    calibrated = cautious_model(0.2, strength=best)
    (b,) = data[:1]
    with torch.no_grad():
        out = calibrated(b["composite"], b["mask"])
    fg = b["mask"].expand_as(out) > 0
    assert torch.allclose(out[fg], b["real"][fg], atol=1e-5)
    assert torch.equal(out[~fg], b["composite"][~fg])


def test_a_model_that_is_already_right_keeps_its_strength():
    best, table = fit_strength(cautious_model(0.25), batches(0.25))
    assert best == 1.0 and table[1.0] == min(table.values())


def test_the_strength_of_an_ensemble_with_mirror_averaging_scales_every_member():
    model = cautious_model(0.2, members=2, tta="flip", strength=1.25)
    heads = [m for m in model.modules() if type(m).__name__ == "OutputHead"]
    assert len(heads) == 2 and all(h.strength == 1.25 for h in heads)


def test_the_image_head_has_no_strength_to_fit():
    with pytest.raises(ValueError, match="colour-transform head"):
        fit_strength(init_weights(build_model({**SPEC, "head": "image"})), batches(0.25))
    with pytest.raises(ValueError, match="the image head has none"):
        build_model({**SPEC, "head": "image", "strength": 1.2})


@pytest.mark.slow
def test_the_train_stage_ships_the_fitted_strength(tiny_local, ray_cluster):
    """``pipeline.train`` on a transform head: the shipped spec, train.json and the MLflow run carry the
    strength fitted on val, and the fit is never worse on val than the model as trained."""
    from mlflow import MlflowClient

    from components.checkpoint import load_generator
    from tests.train.conftest import TINY, read_json, run_train

    proj, root = tiny_local["proj"], tiny_local["root"]
    db = f"sqlite:///{proj / 'mlflow.db'}"
    args = [*TINY, f"storage.root={root}", "prepare.name=tiny", "train.epochs=2", "train.lr=0.01", "train.calibrate=true",
            "model.generator.head=affine", f"train.weights_out={proj / 'generator.pt'}",
            f"train.metrics_out={proj / 'train.json'}", f"train.plots_out={proj / 'epochs.csv'}"]  # fmt: skip
    res = run_train(proj, args, env={"MLFLOW_TRACKING_URI": db, "RAY_ADDRESS": ray_cluster["address"]})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    summary = read_json(proj / "train.json")
    _, info = load_generator(str(proj / "generator.pt"))
    assert info["spec"]["strength"] == summary["strength"] and summary["strength"] in STRENGTHS
    assert summary["val_fmse_calibrated"] <= summary["val_fmse"] * 1.001
    run = MlflowClient(db).get_run(summary["run_id"])
    assert run.data.metrics["strength"] == summary["strength"]
    assert run.data.metrics["val_fmse_calibrated"] == pytest.approx(summary["val_fmse_calibrated"])
