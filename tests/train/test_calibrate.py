"""The strength and dead zone of a transform head's correction, fitted on val after training
(``train.calibrate``, ``train.calibrate_low_bin_max``)."""

from __future__ import annotations

import pytest
import torch

from components.checkpoint import generator_payload, model_from_payload
from components.models import build_model, init_weights
from components.models.ensemble import DeadZone, shrink
from components.models.heads import OutputHead, pool_foreground
from components.models.rainnet import paste_back
from components.training.calibrate import DEADZONES, STRENGTHS, fit_correction

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


def batches(offset: float, n: int = 3, offsets: list[float] | None = None) -> list[dict]:
    """Composites whose foreground is the real one minus ``offset`` (a pure shift to undo); ``offsets``:
    one per image of each batch of 4 instead."""
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor(offsets if offsets is not None else [offset] * 4).view(4, 1, 1, 1)
    out = []
    for _ in range(n):
        real = torch.rand(4, 3, 32, 32, generator=g) * 1.2 - 0.6
        mask = torch.zeros(4, 1, 32, 32)
        mask[:, :, 6:22, 10:26] = 1
        out.append({"composite": torch.where(mask > 0, real - shift, real), "mask": mask, "real": real})
    return out


def test_the_fitted_strength_undoes_a_cautious_correction():
    """The model corrects 0.2 of a 0.25 shift: 1.25 times its correction is the real foreground."""
    model = cautious_model(0.2)
    data = batches(0.25)
    cal = fit_correction(model, data)
    assert (cal.strength, cal.deadzone) == (1.25, 0.0)
    assert cal.val_fmse < 1.0 < cal.as_trained_fmse  # fMSE on 0..255: rounding only, against a visible miss

    calibrated = cautious_model(0.2, strength=cal.strength)
    (b,) = data[:1]
    with torch.no_grad():
        out = calibrated(b["composite"], b["mask"])
    fg = b["mask"].expand_as(out) > 0
    assert torch.allclose(out[fg], b["real"][fg], atol=1e-5)
    assert torch.equal(out[~fg], b["composite"][~fg])


def test_a_model_that_is_already_right_keeps_its_strength():
    cal = fit_correction(cautious_model(0.25), batches(0.25))
    assert (cal.strength, cal.deadzone) == (1.0, 0.0) and cal.val_fmse == cal.as_trained_fmse


def test_the_strength_of_an_ensemble_with_mirror_averaging_scales_every_member():
    model = cautious_model(0.2, members=2, tta="flip", strength=1.25)
    heads = [m for m in model.modules() if type(m).__name__ == "OutputHead"]
    assert len(heads) == 2 and all(h.strength == 1.25 for h in heads)


def test_the_image_head_has_no_strength_to_fit():
    with pytest.raises(ValueError, match="colour-transform head"):
        fit_correction(init_weights(build_model({**SPEC, "head": "image"})), batches(0.25))
    with pytest.raises(ValueError, match="the image head has none"):
        build_model({**SPEC, "head": "image", "strength": 1.2})
    with pytest.raises(ValueError, match="the image head has none"):
        build_model({**SPEC, "head": "image", "deadzone": 0.05})
    with pytest.raises(ValueError, match=r"deadzone must be a number in \[0, 1\)"):
        build_model({**SPEC, "deadzone": -0.1})


def test_the_dead_zone_leaves_small_corrections_out_and_shortens_the_rest_by_tau():
    t = torch.zeros(3, 12, 1, 1)
    t[0, 9] = 0.03  # a nudge: inside the dead zone
    t[1, 9] = 0.5  # a real correction: shortened by tau, direction kept
    got = shrink(t, 0.05)
    assert torch.equal(got[0], torch.zeros(12, 1, 1)) and torch.equal(got[2], t[2])
    assert got[1, 9].item() == pytest.approx(0.45) and torch.count_nonzero(got[1]) == 1
    pixels = torch.zeros(1, 12, 4, 4)
    pixels[0, 9] = 0.5  # a per-pixel map: the RMS over its pixels is the norm
    assert shrink(pixels, 0.05)[0, 9].allclose(torch.full((4, 4), 0.45))


def test_a_dead_zone_model_keeps_its_weights_keys_and_leaves_a_nudged_composite_as_it_is():
    """A generator file of a spec with a dead zone has the same weights and keys as without; the model
    returns a composite whose correction falls in the zone unchanged, everywhere."""
    plain = cautious_model(0.03, tta="flip")
    zoned = cautious_model(0.03, tta="flip", deadzone=0.5)
    assert isinstance(zoned, DeadZone) and zoned.head.head == "affine"
    assert plain.state_dict().keys() == zoned.state_dict().keys()
    payload = generator_payload(zoned, {**SPEC, "tta": "flip", "deadzone": 0.5}, 32)
    loaded = model_from_payload(payload)
    assert isinstance(loaded, DeadZone) and loaded.tau == 0.5
    (b,) = batches(0.03, n=1)
    with torch.no_grad():
        assert torch.equal(loaded(b["composite"], b["mask"]), b["composite"])
        assert not torch.equal(plain(b["composite"], b["mask"]), b["composite"])


class OffByATenth(torch.nn.Module):
    """An affine model that undoes each composite's foreground shift but always adds 0.1 too: it helps
    a composite that is far off and spoils one that was nearly right (the default recipe's failing)."""

    def __init__(self):
        super().__init__()
        self.head = OutputHead("affine")

    def forward(self, composite, mask, return_aux=False):
        raw = torch.zeros(composite.shape[0], 12, *composite.shape[-2:])
        raw[:, 9:12] = 0.1 - pool_foreground(composite, mask).mean(1, keepdim=True)
        pred, t = self.head(raw, composite, mask)
        out = paste_back(pred, composite, mask)
        return (out, {"pred": pred, "transform": t}) if return_aux else out


def uniform_batches(offsets: list[float]) -> list[dict]:
    """Grey scenes (real foreground 0) whose composite foreground is off by ``offsets`` (0.02: fMSE 6.5
    on 0..255, nearly right; 0.3: fMSE 1463, far off)."""
    n = len(offsets)
    real = torch.zeros(n, 3, 32, 32)
    mask = torch.zeros(n, 1, 32, 32)
    mask[:, :, 6:22, 10:26] = 1
    shift = torch.tensor(offsets).view(n, 1, 1, 1)
    return [{"composite": real + mask * shift, "mask": mask, "real": real}]


def test_the_low_bin_cap_buys_a_dead_zone_that_spares_nearly_right_composites():
    """Without the cap the fit takes the strength alone and the nearly-right half gets far worse; with a
    1.2x cap it takes a dead zone that leaves that half as it was, and still corrects the rest."""
    model, data = OffByATenth(), uniform_batches([0.02, 0.02, 0.3, 0.3])
    free = fit_correction(model, data)
    assert free.deadzone == 0.0 and free.low_bin_ratio > 5 and free.strength > 1.0
    capped = fit_correction(model, data, low_bin_max=1.2)
    assert capped.constrained and capped.deadzone in DEADZONES and capped.deadzone > 0
    assert capped.low_bin_ratio <= 1.2 < capped.as_trained_low_bin_ratio
    composite_fmse = (0.3 * 127.5) ** 2 / 2  # the far half's error, averaged over all four
    assert free.val_fmse < capped.val_fmse < composite_fmse  # the cap costs some fMSE, and still helps
    impossible = fit_correction(model, data, low_bin_max=0.5)  # no pair can: the lowest val fMSE, flagged
    assert not impossible.constrained and impossible.val_fmse <= free.val_fmse


@pytest.mark.slow
def test_the_train_stage_ships_the_fitted_strength(tiny_local, ray_cluster):
    """``pipeline.train`` on a transform head: the shipped spec, train.json and the MLflow run carry the
    strength fitted on val, and the fit is never worse on val than the model as trained."""
    from mlflow import MlflowClient

    from components.tracking.model_files import load_generator  # a path and a runs:/ URI
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
    assert info["spec"].get("deadzone", 0.0) == summary["deadzone"] and summary["deadzone"] in DEADZONES
    if summary.get("val_low_bin_ratio", 0) <= 1.2:  # the model as trained met the cap: the fit can only help
        assert summary["val_fmse_calibrated"] <= summary["val_fmse"] * 1.001
    run = MlflowClient(db).get_run(summary["run_id"])
    assert run.data.metrics["strength"] == summary["strength"]
    assert run.data.metrics["val_fmse_calibrated"] == pytest.approx(summary["val_fmse_calibrated"])

    # Calibrated another way, the finished training is not repeated, but its new file is what the run
    # records, what runs:/<id>/model loads and what register registers: a version of its own.
    import mlflow

    from components.checkpoint import file_sha256
    from components.tracking.registry import register_run_model

    mlflow.set_tracking_uri(db)  # the autouse fixture puts it back after the test
    client = MlflowClient(db)
    first, created = register_run_model(client, "calibrated", summary["run_id"])
    assert created
    res = run_train(proj, [*args, "train.calibrate=false"],
                    env={"MLFLOW_TRACKING_URI": db, "RAY_ADDRESS": ray_cluster["address"]})  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    again = read_json(proj / "train.json")
    assert again["run_id"] == summary["run_id"] and "strength" not in again  # resumed, not calibrated
    digest = file_sha256(proj / "generator.pt")
    assert client.get_run(summary["run_id"]).data.tags["generator_sha256"] == digest
    _, info = load_generator(f"runs:/{summary['run_id']}/model")  # hash-checked against the run's record
    assert "strength" not in info["spec"]
    second, created = register_run_model(client, "calibrated", summary["run_id"])
    assert created and int(second.version) == int(first.version) + 1
    third, created = register_run_model(client, "calibrated", summary["run_id"])
    assert not created and third.version == second.version
