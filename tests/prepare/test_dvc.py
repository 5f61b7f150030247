"""``dvc repro prepare`` on a fresh clone of the committed repo, then a second run that does nothing."""

from __future__ import annotations

import json
import os
import re
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
    text, n = re.subn(r"crops_per_photo: \d+", "crops_per_photo: 2", params.read_text(), count=1)
    assert n == 1, "params.yaml has no prepare.crops_per_photo"
    params.write_text(text)
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

    # Two experiments side by side: `dvc exp show` stays readable (the issue counted 261 CSV columns
    # when cards, ids and hashes were metrics): names, the params that differ and headline numbers only.
    for seed in (1, 2):
        dvc("exp", "run", "prepare", "-S", f"prepare.seed={seed}", "-n", f"seed{seed}")
    table = dvc("exp", "show", "--csv", "--only-changed").strip().splitlines()
    header = table[0].split(",")
    rows = {line.split(",")[0]: line for line in table[1:]}
    assert {"seed1", "seed2"} <= set(rows), table
    assert "prepare.seed" in header and "train_triplets" in header, header
    assert len(header) <= 15, header  # Experiment, rev, typ, Created + a handful of numbers and params
    assert not any("hash" in h or "run_id" in h for h in header), header
