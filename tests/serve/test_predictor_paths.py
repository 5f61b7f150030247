"""One Predictor, three ways in: ``evaluate``, the ``harmonize`` CLI and the pyfunc model give the same pixels.

And the image module's conversions as a user meets them through ``harmonize``: a 16-bit and a grayscale
composite come out as 8-bit RGB of their own size, neither saturated nor shifted.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from components.evaluation import metrics
from components.inference.predictor import Predictor
from pipeline import evaluate
from pipeline import harmonize as cli
from tests.serve import helpers
from tests.serve.conftest import REPO, log_training_run, on_server, run_stage

PARAMS = str(REPO / "params.yaml")
WIDTH, HEIGHT = 300, 200  # not the network's size, not square: the full-resolution path
PHOTO_INDEX = 7  # a photo the strong model was not trained on (it saw photos 0..5)


def mini_subset(photos: Path, pid: str, root: Path) -> dict[str, Path]:
    """A one-image iHarmony4 subset: a recoloured photo at 300x200 with a soft-edged mask (PNG files)."""
    real = np.asarray(
        Image.open(photos / "photos" / f"{pid}.jpg").convert("RGB").resize((WIDTH, HEIGHT), Image.BICUBIC)
    )
    hard = Image.open(photos / "masks" / f"{pid}.png").convert("L").resize((WIDTH, HEIGHT), Image.NEAREST)
    soft = np.asarray(hard.filter(ImageFilter.GaussianBlur(2)))  # alpha ramps on the object's border
    assert ((soft > 0) & (soft < 255)).any() and (soft == 255).sum() > 500
    comp = helpers.recolour(real, soft > 0, np.random.default_rng(5), band=(300.0, 2500.0))
    sub = root / "Mini"
    for d in ("composite_images", "masks", "real_images"):
        (sub / d).mkdir(parents=True)
    files = {
        "composite": sub / "composite_images" / "p1_1_1.png",
        "mask": sub / "masks" / "p1_1.png",
        "real": sub / "real_images" / "p1.jpg",
    }
    Image.fromarray(comp).save(files["composite"])
    Image.fromarray(soft).save(files["mask"])
    Image.fromarray(real).save(files["real"], quality=95)
    (sub / "Mini_test.txt").write_text("p1_1_1.png\n")
    return files


@pytest.fixture(scope="module")
def pct_run(tracked, tmp_path_factory) -> str:
    """A RainNet with the per-pixel transform head, off its identity start, logged as a training run."""
    import torch

    from components.models import build_model, init_weights

    torch.manual_seed(0)
    spec = {"name": "rainnet", "placement": "rain-decoder", "ngf": 8, "image_size": 32, "head": "pct"}
    model = init_weights(build_model(spec))
    with torch.no_grad():  # as after some training: a transform that varies over the object
        layer = model.decoders[0].conv
        layer.weight.normal_(0.0, 0.05)
        layer.bias.normal_(0.0, 0.2)
    gen = {"spec": spec, "model": model.eval(), "steps": 0}
    with on_server(tracked["uri"]):
        return log_training_run(
            gen, "harmonization-train", f"pct-{tracked['tag']}", tmp_path_factory.mktemp("pct")
        )


@pytest.mark.parametrize("head", ["image", "pct"])
def test_evaluate_harmonize_and_pyfunc_give_identical_pixels(
    head, request, tracked, photos, photo_ids, tmp_path, monkeypatch
):
    import mlflow

    run_id = tracked["runs"]["strong"] if head == "image" else request.getfixturevalue("pct_run")
    uri = f"runs:/{run_id}/model"
    files = mini_subset(photos, photo_ids[PHOTO_INDEX], tmp_path / "ih")
    comp = np.asarray(Image.open(files["composite"]).convert("RGB"))
    mask = np.asarray(Image.open(files["mask"]))
    real = np.asarray(Image.open(files["real"]).convert("RGB"))

    # evaluate: what the Predictor returned for the image, caught on its way to the metrics.
    seen: list[np.ndarray] = []
    original = Predictor.finish

    def spy(self, *args, **kwargs):
        results = original(self, *args, **kwargs)
        seen.extend(native.copy() for native, _ in results)
        return results

    monkeypatch.setattr(Predictor, "finish", spy)
    out_dir = tmp_path / "eval"
    run_stage(
        evaluate.main,
        f"evaluate.model={uri}",
        f"evaluate.data={tmp_path / 'ih'}",
        f"evaluate.per_image_out={out_dir / 'per_image.csv'}",
        f"evaluate.summary_out={out_dir / 'eval.json'}",
        f"evaluate.summary_md={out_dir / 'eval.md'}",
        f"evaluate.showcase_out={out_dir / 'showcase.png'}",
    )
    monkeypatch.undo()
    # Once for the scores, and again for the run's showcase image: the same pixels both times.
    assert len(seen) >= 1 and all(np.array_equal(s, seen[0]) for s in seen)
    by_evaluate = seen[0]
    assert (out_dir / "showcase.png").is_file()

    # harmonize: the CLI, PNG out.
    png = tmp_path / "out.png"
    args = ["--params", PARAMS, str(files["composite"]), str(files["mask"]), "-o", str(png)]
    assert cli.main([*args, "-m", uri]) == 0
    with Image.open(png) as im:
        assert im.mode == "RGB"
        by_cli = np.asarray(im)

    # The MLflow model, as a user loads it.
    by_pyfunc = mlflow.pyfunc.load_model(uri).predict({"composite": comp[None], "mask": mask[None]})[0]

    assert by_evaluate.shape == by_cli.shape == by_pyfunc.shape == (HEIGHT, WIDTH, 3)
    assert by_evaluate.dtype == by_cli.dtype == by_pyfunc.dtype == np.uint8
    assert np.array_equal(by_cli, by_evaluate)
    assert np.array_equal(by_pyfunc, by_evaluate)
    bg, fg = mask == 0, mask == 255
    assert np.array_equal(by_cli[bg], comp[bg])  # background untouched
    assert (by_cli[fg] != comp[fg]).any(axis=-1).mean() > 0.5  # and the model did act on the object

    # evaluate's scores are those of the very pixels the CLI wrote.
    with open(out_dir / "per_image.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (int(row["width"]), int(row["height"])) == (WIDTH, HEIGHT)
    hand = metrics.image_metrics(by_cli, real, mask)
    for key in ("mse", "fmse"):
        assert float(row[key]) == pytest.approx(float(hand[key]), rel=1e-6, abs=1e-5)


def _cli(generators, comp_path: Path, mask_path: Path, out: Path) -> np.ndarray:
    args = ["--params", PARAMS, str(comp_path), str(mask_path), "-o", str(out)]
    assert cli.main([*args, "-m", generators["strong"]["path"]]) == 0
    with Image.open(out) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _object(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 255
    return mask


def test_16bit_png_composite_harmonizes_as_8bit_rgb(generators, tmp_path):
    """A mid-grey 16-bit PNG comes out mid-grey 8-bit RGB (not white), the background its 8-bit value."""
    h, w = 150, 220
    rng = np.random.default_rng(0)
    ramp = np.linspace(24000, 42000, w)[None, :] + rng.normal(0, 800, (h, w))
    grey16 = np.clip(np.rint(ramp), 0, 65535).astype(np.uint16)  # 0.37..0.64 of full scale
    Image.fromarray(grey16).save(tmp_path / "comp16.png")
    with Image.open(tmp_path / "comp16.png") as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
    mask = _object(h, w)
    Image.fromarray(mask).save(tmp_path / "mask.png")

    out = _cli(generators, tmp_path / "comp16.png", tmp_path / "mask.png", tmp_path / "out.png")

    as8 = np.rint(grey16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    expected = np.repeat(as8[..., None], 3, axis=2)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    bg = mask == 0
    assert np.array_equal(out[bg], expected[bg])
    assert 95 <= out.mean() <= 165 and (out == 255).mean() < 0.01  # mid-grey, not saturated
    assert abs(float(out[~bg].mean()) - float(expected[~bg].mean())) < 60  # the object stays in range


def test_grayscale_composite_harmonizes_as_rgb(generators, tmp_path):
    h, w = 97, 131
    rng = np.random.default_rng(1)
    grey = np.clip(np.linspace(40, 210, w)[None, :] + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "comp.png")
    with Image.open(tmp_path / "comp.png") as im:
        assert im.mode == "L"
    mask = _object(h, w)
    Image.fromarray(mask).save(tmp_path / "mask.png")

    out = _cli(generators, tmp_path / "comp.png", tmp_path / "mask.png", tmp_path / "out.png")

    expected = np.repeat(grey[..., None], 3, axis=2)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    bg = mask == 0
    assert np.array_equal(out[bg], expected[bg])
    assert (out == 255).mean() < 0.01 and abs(float(out.mean()) - float(grey.mean())) < 40
