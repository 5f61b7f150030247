"""Metrics against hand-computed values (RAINNET.md section 5, conventions in components/evaluation/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

from components.evaluation import metrics as M


def _tiny():
    """2x2 image: pixel (0,0) off by (1,2,3), pixel (1,1) off by (0,0,6); foreground (0,0) and (0,1).

    SSE over all = 1+4+9 + 36 = 50 -> MSE = 50/12.   Foreground SSE = 14 -> fMSE = 14/(3*2) = 7/3.
    fg_ratio = 2/4.
    """
    real = np.zeros((2, 2, 3), np.uint8)
    pred = real.copy()
    pred[0, 0] = (1, 2, 3)
    pred[1, 1] = (0, 0, 6)
    mask = np.array([[1, 1], [0, 0]], np.uint8)
    return pred, real, mask


def test_hand_computed_values():
    pred, real, mask = _tiny()
    m = M.image_metrics(pred, real, mask)
    assert m["mse"] == pytest.approx(50 / 12, rel=1e-12)
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 * 12 / 50), rel=1e-12)  # 41.933 dB
    assert m["psnr"] == pytest.approx(41.9329, abs=1e-4)
    assert m["fmse"] == pytest.approx(7 / 3, rel=1e-12)
    assert m["fpsnr"] == pytest.approx(10 * math.log10(255**2 * 3 / 7), rel=1e-12)
    assert m["fg_ratio"] == 0.5 and m["fg_pixels"] == 2 and m["empty_fg"] is False


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: m.astype(bool),
        lambda m: m,  # 0/1 uint8
        lambda m: m * 255,  # 0/255 uint8 (PNG masks)
        lambda m: m.astype(np.float32),
        lambda m: (m * 255)[..., None],  # (H, W, 1)
        lambda m: torch.from_numpy(m.astype(np.float32)),
    ],
)
def test_mask_encodings_agree(encode):
    pred, real, mask = _tiny()
    assert M.image_metrics(pred, real, encode(mask))["fmse"] == pytest.approx(7 / 3, rel=1e-12)


def test_perfect_prediction_is_capped_at_100_db():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    m = M.image_metrics(real, real.copy(), np.ones((8, 8), bool))
    assert m["mse"] == 0.0 and m["fmse"] == 0.0
    assert m["psnr"] == M.PSNR_CAP == 100.0 and m["fpsnr"] == 100.0


def test_cap_keeps_psnr_monotone():
    # One channel of one pixel off by one level in 256x256: 10 log10(255^2 * 196608) = 101.07 dB uncapped.
    real = np.zeros((256, 256, 3), np.uint8)
    pred = real.copy()
    pred[0, 0, 0] = 1
    assert 10 * math.log10(255**2 * 256 * 256 * 3) > 101
    m = M.image_metrics(pred, real, np.ones((256, 256), bool))
    assert m["mse"] == 1 / (256 * 256 * 3)
    assert m["psnr"] == 100.0  # not above the perfect prediction's value


def test_empty_mask_defines_fmse_and_flags_it():
    pred, real, _ = _tiny()
    m = M.image_metrics(pred, real, np.zeros((2, 2), np.uint8))
    assert m["fmse"] == 0.0 and m["fpsnr"] == M.PSNR_CAP
    assert m["empty_fg"] is True and m["fg_ratio"] == 0.0
    assert m["mse"] == pytest.approx(50 / 12)  # the whole-image metrics are unaffected


def test_full_mask_fmse_equals_mse():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(2))
    m = M.image_metrics(a, b, np.full((5, 7), 255, np.uint8))
    assert m["fmse"] == pytest.approx(m["mse"], rel=1e-12)


def test_batch_matches_a_float64_reference_and_torch_input():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    real = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    mask = rng.random((4, 6, 5)) < 0.3
    mask[1] = False
    out = M.batch_metrics(pred, real, mask)
    for i in range(4):
        d2 = (pred[i].astype(np.float64) - real[i].astype(np.float64)) ** 2
        assert out["mse"][i] == pytest.approx(d2.mean(), rel=1e-12)
        fg = mask[i]
        ref_fmse = d2[fg].sum() / (3 * fg.sum()) if fg.any() else 0.0
        assert out["fmse"][i] == pytest.approx(ref_fmse, rel=1e-12)
    assert out["empty_fg"].tolist() == [False, True, False, False]
    t = M.batch_metrics(torch.from_numpy(pred), torch.from_numpy(real), torch.from_numpy(mask))
    for key in out:
        np.testing.assert_array_equal(t[key], out[key])


def test_to_uint8_rounds_not_truncates():
    # 0.999 of a level above k must give k + 1 (truncation would give k).
    k = np.arange(0, 255)
    x = (k + 0.999) / 127.5 - 1.0
    np.testing.assert_array_equal(M.to_uint8(x), k + 1)
    np.testing.assert_array_equal(M.to_uint8(torch.from_numpy(x)).numpy(), k + 1)
    # 0.4 of a level stays at k; out of range is clipped.
    np.testing.assert_array_equal(M.to_uint8((k + 0.4) / 127.5 - 1.0), k)
    assert M.to_uint8(np.array([-1.0, 1.0, -3.0, 2.0])).tolist() == [0, 255, 0, 255]


def test_to_uint8_numpy_and_torch_agree_and_invert_from_uint8():
    levels = np.arange(256, dtype=np.uint8)
    x = M.from_uint8(levels)
    assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(M.to_uint8(x), levels)
    xt = M.from_uint8(torch.from_numpy(levels))
    assert xt.dtype == torch.float32
    np.testing.assert_array_equal(M.to_uint8(xt).numpy(), levels)
    np.testing.assert_array_equal(
        M.to_uint8(xt.to(torch.bfloat16)).numpy(), M.to_uint8(xt.bfloat16().float()).numpy()
    )
    r = np.random.default_rng(3).uniform(-1.2, 1.2, 10_000)
    np.testing.assert_array_equal(M.to_uint8(r), M.to_uint8(torch.from_numpy(r)).numpy())
    # The only exact tie inside [-1, 1] is x = 0 -> 127.5 -> 128 (half to even and half up agree).
    assert M.to_uint8(np.array([0.0])).tolist() == [128]
    assert M.to_uint8(torch.zeros(1)).tolist() == [128]


def test_to_uint8_rejects_nan():
    with pytest.raises(ValueError, match="non-finite"):
        M.to_uint8(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="non-finite"):
        M.to_uint8(torch.tensor([float("inf")]))


def test_images_to_uint8_is_channels_last():
    x = torch.full((2, 3, 4, 5), -1.0)
    x[:, 1] = 1.0  # green channel full
    y = M.images_to_uint8(x)
    assert y.shape == (2, 4, 5, 3) and y.dtype == np.uint8
    assert (y[..., 0] == 0).all() and (y[..., 1] == 255).all()


def test_bad_inputs_are_named():
    pred, real, mask = _tiny()
    with pytest.raises(TypeError, match="pred.*uint8"):
        M.image_metrics(pred.astype(np.float32), real, mask)
    with pytest.raises(ValueError, match="differ in shape"):
        M.batch_metrics(pred[None], real[None, :1], mask[None])
    with pytest.raises(ValueError, match="mask shape"):
        M.batch_metrics(pred[None], real[None], mask[None, :1])
    with pytest.raises(ValueError, match="mask"):
        M.image_metrics(pred, real, mask.astype(np.float32) * 300)


def _row(subset, fg_ratio, mse, fmse=None, empty=False):
    return {
        "subset": subset,
        "fg_ratio": fg_ratio,
        "mse": mse,
        "psnr": float(M.psnr_from_mse(mse)),
        "fmse": mse * 10 if fmse is None else fmse,
        "fpsnr": float(M.psnr_from_mse(mse * 10 if fmse is None else fmse)),
        "empty_fg": empty,
    }


def test_summary_is_image_weighted():
    rows = [_row("A", 0.02, 10.0), _row("A", 0.10, 20.0), _row("B", 0.50, 60.0)]
    s = M.summarize(rows)
    # Image-weighted: (10 + 20 + 60) / 3 = 30, not the mean of subset means (15 + 60) / 2 = 37.5.
    assert s["overall"]["n"] == 3 and s["overall"]["mse"] == pytest.approx(30.0)
    assert s["overall"]["fmse"] == pytest.approx(300.0)
    assert s["by_subset"]["A"] == {
        "n": 2,
        "mse": pytest.approx(15.0),
        "psnr": pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2),
        "fmse": pytest.approx(150.0),
        "fpsnr": pytest.approx((rows[0]["fpsnr"] + rows[1]["fpsnr"]) / 2),
        "n_empty_fg": 0,
    }
    assert s["by_subset"]["B"]["mse"] == 60.0
    assert list(s["by_fg_ratio"]) == ["0-5", "5-15", "15-100"]
    assert [s["by_fg_ratio"][b]["mse"] for b in ("0-5", "5-15", "15-100")] == [10.0, 20.0, 60.0]


def test_bins_are_half_open():
    cases = {0.0: "0-5", 0.0499: "0-5", 0.05: "5-15", 0.1499: "5-15", 0.15: "15-100", 1.0: "15-100"}
    assert {f: M.fg_bin(f) for f in cases} == cases
    for bad in (-0.01, 1.01, 5.0):  # percentages are a mistake, not a bin
        with pytest.raises(ValueError, match="fraction"):
            M.fg_bin(bad)


def test_empty_groups_and_empty_masks_are_counted():
    s = M.summarize([_row("A", 0.0, 5.0, fmse=0.0, empty=True), _row("A", 0.3, 7.0)])
    assert s["by_fg_ratio"]["5-15"] == {
        "n": 0,
        "mse": None,
        "psnr": None,
        "fmse": None,
        "fpsnr": None,
        "n_empty_fg": 0,
    }
    assert s["overall"]["n_empty_fg"] == 1 and s["by_fg_ratio"]["0-5"]["n_empty_fg"] == 1
    assert s["overall"]["fmse"] == pytest.approx(35.0)  # (0 + 70) / 2: the empty mask counts as 0
    with pytest.raises(ValueError, match="fpsnr"):
        M.summarize([{"subset": "A", "fg_ratio": 0.1, "mse": 1, "psnr": 1, "fmse": 1}])


def test_rows_from_batch_then_flatten_to_valid_mlflow_names():
    pred, real, mask = _tiny()
    res = M.batch_metrics(np.stack([pred, real]), np.stack([real, real]), np.stack([mask, mask]))
    rows = M.rows_from_batch(res, subset=["H COCO!", "HAdobe5k"], sample_id=["a", "b"])
    assert rows[0]["sample_id"] == "a" and rows[0]["fmse"] == pytest.approx(7 / 3)
    assert isinstance(rows[0]["mse"], float) and isinstance(rows[0]["empty_fg"], bool)
    flat = M.flatten_summary(M.summarize(rows), prefix="test")
    assert flat["test_mse"] == pytest.approx(50 / 12 / 2)
    assert flat["test_n"] == 2.0
    assert flat["test_fmse.H_COCO_"] == pytest.approx(7 / 3)
    assert flat["test_psnr.HAdobe5k"] == 100.0
    assert flat["test_fmse.fg_15-100"] == pytest.approx(7 / 6)
    assert not any(k.startswith("test_mse.fg_0-5") for k in flat)  # empty bin: no metric
    for key in flat:
        assert validate_param_and_metric_name(key) and not path_not_unique(key), key
    assert set(M.flatten_summary(M.summarize(rows), prefix="val", groups=False)) == {
        "val_n",
        "val_mse",
        "val_psnr",
        "val_fmse",
        "val_fpsnr",
    }
    with pytest.raises(ValueError, match="subset"):
        M.rows_from_batch(res, subset=["only-one"])
