"""Tiny data and helpers for the training tests: shards written with the real shard writer, real CLIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.data.dataset import DatasetWriter
from components.data.images import encode_png
from components.storage import Store

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

# A tiny RainNet at 32x32 (5 U-Net blocks) and batches of 4: seconds per epoch on a busy CPU.
TINY = [
    "model.generator.ngf=4",
    "model.generator.members=1",  # the default trains two networks; one is enough where ensembles are not tested
    "model.discriminator.ndf=4",
    "model.domain_discriminator.ndf=4",
    "train.batch_size=4",
    "train.decay_epochs=0",
    "train.cpus_per_worker=1",
    "train.log_every_steps=2",
    "train.sample_grid=2",
    "train.keep=last",  # tests check the last epoch's model
]


def _triplet(rng: np.random.Generator, size: int):
    """A smooth real image, a rectangular object, and the composite with the object's colours shifted."""
    coarse = rng.uniform(30, 225, size=(4, 4, 3))
    idx = np.linspace(0, 3, size)
    i0 = np.floor(idx).astype(int).clip(0, 2)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (size, 4, 3)
    real = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
    h, w = rng.integers(size // 3, size // 2 + 2, size=2)
    y, x = rng.integers(0, size - h), rng.integers(0, size - w)
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + h, x : x + w] = 255
    gain, shift = rng.uniform(0.6, 1.4, 3), rng.uniform(-40, 40, 3)
    comp = real.copy()
    comp[mask > 0] = comp[mask > 0] * gain + shift
    real, comp = (np.clip(np.rint(a), 0, 255).astype(np.uint8) for a in (real, comp))
    fg = mask > 0
    fg_mse = float(((comp.astype(float) - real) ** 2)[fg].mean())
    return comp, mask, real, float(fg.mean()), fg_mse


def write_tiny_dataset(root: str, name: str = "tiny", n_train: int = 16, n_val: int = 8, size: int = 32,
                       seed: int = 0) -> dict:  # fmt: skip
    """Write and publish train/val shards of synthetic triplets as dataset ``<root>/datasets/<name>/``
    (local, or s3:// through the AWS environment); returns the manifest."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(Store(root), name, rows_per_shard=10**6, rows_per_row_group=8)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            comp, mask, real, ratio, fg_mse = _triplet(rng, size)
            writer.add({
                "sample_id": f"{split}-{i}", "scene_id": f"{split}-{i}", "subset": "tiny", "split": split,
                "source": "synthetic", "method": "gain_shift", "composite": encode_png(comp),
                "mask": encode_png(mask), "real": encode_png(real), "height": size, "width": size,
                "fg_ratio": ratio, "fg_mse": fg_mse,
            })  # fmt: skip
    return writer.publish(image_size=size)


def project_dir(tmp: Path) -> Path:
    """A folder that looks like the project root to the stage (params.yaml + profiles), outputs inside."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    if (REPO / "profiles").is_dir():
        shutil.copytree(REPO / "profiles", tmp / "profiles", dirs_exist_ok=True)
    return tmp


def run_train(cwd: Path, overrides: list[str], env: dict | None = None, timeout: float = 420):
    """``python -m pipeline.train -S ...`` as a user runs it; returns the CompletedProcess."""
    cmd = [PY, "-m", "pipeline.train"]
    for o in overrides:
        cmd += ["-S", o]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", **(env or {})}  # fmt: skip
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None in ``env``: unset that variable
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def tiny_local(tmp_path) -> dict:
    """A project folder with tiny shards in its local storage root."""
    proj = project_dir(tmp_path / "proj")
    store = str(proj / "store")
    write_tiny_dataset(store)
    return {"proj": proj, "root": store}
