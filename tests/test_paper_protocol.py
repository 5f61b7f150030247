"""``evaluate``'s paper protocol against its definitions, and batched evaluation against one image at a time.

The expected paper numbers are computed here from the definitions alone: the RainNet authors' loader
(PIL bilinear to the network's size, the mask ``convert("1")`` and resized by nearest, ``to_tensor`` and
``Normalize(0.5, 0.5)`` in float32, the composite's background replaced by the real's), their
``processImage`` paste, their ``tensor2im`` (float32, truncation), scikit-image's MSE and PSNR and the
iHarmony4 papers' fMSE = foreground squared error / (3 x foreground pixels), fPSNR from it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

from components.data.images import encode_png
from components.evaluation import scoring as evaluation
from components.evaluation.scoring import Sample
from components.inference.predictor import Predictor
from components.models import build_model, init_weights

SIZE = 32
SHAPES = [(57, 83), (32, 32), (120, 96), (75, 75), (64, 40)]  # (height, width): mixed sizes in one batch


def generator(head: str = "image") -> torch.nn.Module:
    torch.manual_seed(0)
    model = init_weights(build_model({"name": "rainnet", "placement": "rain-decoder", "ngf": 4, "head": head,
                                      "image_size": SIZE}))  # fmt: skip
    with torch.no_grad():  # off the identity start of a transform head: the network really acts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def triplet(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth real photo with noise, an ellipse with a soft (0..255 graded) edge, the object recoloured."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 180 + 40, yy / h * 150 + 60, (xx + yy) / (h + w) * 200 + 20], -1)
    real = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    r = ((yy - h * 0.5) / (h * 0.3)) ** 2 + ((xx - w * 0.45) / (w * 0.28)) ** 2
    mask = np.clip((1.15 - r) / 0.3 * 255, 0, 255).astype(np.uint8)
    gain = rng.uniform(0.6, 1.4, 3)
    fg = (mask > 0)[..., None]
    comp = np.where(fg, np.clip(real * gain + rng.uniform(-30, 30, 3), 0, 255), real).astype(np.uint8)
    return comp, mask, real


def authors_scores(model, triplets, size: int, rounding: bool = False) -> list[dict]:
    """The paper's numbers from the definitions (numpy, PIL, scikit-image); the network on one batch."""

    def norm(img: np.ndarray) -> np.ndarray:
        a = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), np.float32) / np.float32(255)
        return (a - np.float32(0.5)) / np.float32(0.5)

    comps, masks, reals = [], [], []
    for comp, mask, real in triplets:
        m = np.asarray(Image.fromarray(mask).convert("1").resize((size, size), Image.NEAREST), np.float32)
        c, r = norm(comp), norm(real)
        comps.append(c * m[..., None] + r * (1 - m[..., None]))
        masks.append(m)
        reals.append(r)
    ct = torch.from_numpy(np.stack(comps)).permute(0, 3, 1, 2)
    mt = torch.from_numpy(np.stack(masks))[:, None]
    with torch.no_grad():
        pred = model(ct, mt)
        pred = (pred * mt + ct * (1 - mt)).permute(0, 2, 3, 1).numpy()

    def to_u8(a: np.ndarray) -> np.ndarray:
        v = (a + 1) / 2.0 * 255.0
        return (np.rint(v) if rounding else v).astype(np.uint8)

    out = []
    for p, c, r, m in zip(pred, comps, reals, masks, strict=True):
        real_u8, fg = to_u8(r), m > 0.5

        def score(x: np.ndarray, real_u8=real_u8, fg=fg) -> dict:
            fmse = ((x.astype(np.float64) - real_u8) ** 2)[fg].sum() / (3 * fg.sum())
            return {"mse": mean_squared_error(x, real_u8), "psnr": peak_signal_noise_ratio(x, real_u8),
                    "fmse": fmse, "fpsnr": 10 * np.log10(255.0**2 / fmse)}  # fmt: skip

        out.append({"harmonized": score(to_u8(p)), "composite": score(to_u8(c))})
    return out


def batch_of(triplets) -> list[tuple[Sample, tuple]]:
    return [(Sample(f"s{i % 2}/img{i}.png", f"s{i % 2}", b"", b"", b""), t) for i, t in enumerate(triplets)]


@pytest.mark.parametrize("head", ["image", "affine"])
def test_paper_numbers_equal_the_authors_definitions(head):
    model = generator(head)
    triplets = [triplet(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]
    rows = evaluation.score_batch(Predictor(model, SIZE, device="cpu"), batch_of(triplets))
    expected = authors_scores(model, triplets, SIZE)

    for row, exp in zip(rows, expected, strict=True):
        for k in ("mse", "psnr", "fmse", "fpsnr"):
            assert row[f"paper_{k}"] == pytest.approx(exp["harmonized"][k], rel=1e-12), k
            assert row[f"paper_composite_{k}"] == pytest.approx(exp["composite"][k], rel=1e-12), k
    # The model changed the foreground, and tensor2im truncates: rounding would give other numbers.
    assert any(r["paper_fmse"] != r["paper_composite_fmse"] for r in rows)
    rounded = authors_scores(model, triplets, SIZE, rounding=True)
    assert any(r["harmonized"]["mse"] != e["harmonized"]["mse"] for r, e in zip(rounded, expected, strict=True))

    # Per subset and overall, apart from the native-resolution tables.
    paper = evaluation.summaries(rows)["paper"]
    for subset in ("s0", "s1"):
        idx = [i for i in range(len(rows)) if f"s{i % 2}" == subset]
        for k in ("mse", "fmse"):
            want = np.mean([expected[i]["harmonized"][k] for i in idx])
            assert paper["harmonized"]["by_subset"][subset][k] == pytest.approx(want, rel=1e-12)
    assert paper["harmonized"]["overall"]["n"] == len(rows)
    assert paper["harmonized"]["overall"]["fmse"] == pytest.approx(
        np.mean([e["harmonized"]["fmse"] for e in expected]), rel=1e-12
    )


def same_rows(got: list[dict], want: list[dict]) -> None:
    """The same images in the same order, every number equal to float tolerance, every label equal."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        for k, v in w.items():
            assert g[k] == (pytest.approx(v, rel=1e-6, abs=1e-9) if isinstance(v, float) else v), k


@pytest.mark.parametrize("head", ["image", "affine", "pct"])
def test_batched_evaluation_equals_one_image_at_a_time(head):
    """Mixed sizes in one batch give the same rows as each image alone, to float tolerance."""
    predictor = Predictor(generator(head), SIZE, device="cpu", batch_size=4)
    triplets = [triplet(h, w, 10 + seed) for seed, (h, w) in enumerate(SHAPES)]
    batch = batch_of(triplets)
    batched = evaluation.score_batch(predictor, batch)
    alone = [evaluation.score_sample(predictor, s, t) for s, t in batch]
    same_rows(batched, alone)
    # evaluate() itself, from encoded files in batches of 2: the same rows.
    samples = [Sample(s.path, s.subset, *(encode_png(a) for a in t)) for s, t in batch]
    looped = evaluation.evaluate(predictor, samples, progress=False, batch_size=2)
    same_rows(looped, batched)
    # The batch really ran through several network batches (4 + 1) and gave every image its native size.
    outs = predictor.finish([predictor.prepare(c, m) for c, m, _ in triplets])
    assert [o.shape[:2] for o, _ in outs] == SHAPES
    for (c, m, _), (out, _) in zip(triplets, outs, strict=True):
        assert np.array_equal(out[m == 0], c[m == 0])  # the background byte-identical
