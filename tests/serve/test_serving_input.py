"""The served model's input contract refuses what it cannot read as 8-bit pixels (issue 23, item 9):
a composite sent as 0..1 floats was cast to uint8 zeros and answered with a black image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.inference import serving_io


def test_float_pixels_are_refused_not_cast_to_a_black_image():
    comp = np.random.default_rng(0).uniform(0, 1, size=(1, 8, 8, 3))  # an image scaled to 0..1
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[:, 2:6, 2:6] = 255
    with pytest.raises(ValueError, match=r"composite: expected integer pixel values 0\.\.255 \(uint8\), got float64"):
        serving_io.parse_input({"composite": comp, "mask": mask})
    with pytest.raises(ValueError, match=r"mask: expected integer pixel values"):
        serving_io.parse_input({"composite": (comp * 255).astype(np.uint8), "mask": mask / 255.0})
    # integers of any width in 0..255 are the contract (JSON lists parse to int64)
    (c,), (m,) = serving_io.parse_input({"composite": (comp * 255).astype(np.int64), "mask": mask.astype(np.int64)})
    assert c.dtype == np.uint8 and m.dtype == np.uint8


def test_nesting_depth_counts_structure_not_brackets_inside_strings():
    """The serve command's guard (a 5000-deep body is a 400) must pass every real request: brackets and
    escaped quotes inside strings are not structure."""
    tensor = serving_io.request(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8), compact=False)
    assert serving_io.nesting_depth(json.dumps(tensor).encode()) == 6  # {"inputs": {"composite": [N][H][W][3]}}
    tricky = json.dumps({"inputs": {"note": 'a "quoted" [[[[ {{ \\ text', "x": [[1]]}}).encode()
    assert serving_io.nesting_depth(tricky) == 4
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert serving_io.nesting_depth(deep) == 5001 > serving_io.MAX_NESTING
