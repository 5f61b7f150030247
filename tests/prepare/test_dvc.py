"""``dvc repro prepare`` on a fresh clone of the committed repo, then a second run that does nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_dvc_repro_prepare_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # fewer crops than the default keeps this test short; everything else is the committed default
    params = clone / "params.yaml"
    params.write_text(params.read_text().replace("crops_per_photo: 96", "crops_per_photo: 12", 1))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args: str) -> str:
        res = subprocess.run(["dvc", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout + res.stderr

    first = dvc("repro", "prepare")
    assert "Running stage 'prepare'" in first
    manifest = json.loads((clone / "data/prepared/manifest.json").read_text())
    card = json.loads((clone / "metrics/dataset_card.json").read_text())
    assert manifest["content_hash"] == card["content_hash"] and all(card["counts"].values())
    for infos in manifest["shards"].values():
        for info in infos:
            assert (clone / info["uri"]).stat().st_size == info["bytes"]
    assert (clone / "reports/prepare_samples.png").read_bytes()[:4] == b"\x89PNG"
    second = dvc("repro", "prepare")
    assert "Running stage" not in second and "didn't change" in second
    shown = dvc("metrics", "show")
    assert "metrics/headline/dataset_card.json" in shown and "train_triplets" in shown
    assert str(card["counts"]["train"]) in shown
    assert card["content_hash"] not in shown  # the card is a plain output; the metric is the headline
