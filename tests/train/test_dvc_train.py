"""``dvc repro train`` in a copy of the project, then ``dvc metrics show`` (the headline only) and
``dvc plots show`` (epoch on x, PSNR and fMSE apart, the composite beside the model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 480) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clone_working_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files (what a commit of this tree would hold), as a new repo."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def tiny_project(clone: Path, **train: object) -> dict[str, str]:
    """A copy of the working tree with tiny params (``train`` overrides on top); returns the env to run it."""
    clone_working_tree(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["prepare"].update(image_size=32, crops_per_photo=2, val_fraction=0.3, test_fraction=0.2,
                             sources=[{"kind": "builtin", "limit": 10}])  # fmt: skip
    params["model"]["generator"].update(ngf=4, members=1)  # one network: ensembles are tested elsewhere
    params["train"].update(epochs=1, decay_epochs=0, batch_size=4, num_workers=1, cpus_per_worker=1,
                           log_every_steps=2, **train)  # fmt: skip
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RAY_ADDRESS"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    return env


def test_dvc_repro_train_then_metrics_and_plots(tmp_path):
    clone = tmp_path / "clone"
    env = tiny_project(clone)
    sh(["git", "init", "-q"], clone, env)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "clone"], clone, env)

    sh([str(BIN / "dvc"), "repro", "train"], clone, env, timeout=600)
    summary = json.loads((clone / "metrics" / "train.json").read_text())
    assert (clone / "models" / "generator.pt").is_file()
    assert (clone / "mlruns.db").is_file()  # default tracking: the sqlite file in the project root

    shown = json.loads(sh([str(BIN / "dvc"), "metrics", "show", "--json"], clone, env).stdout)
    files = next(iter(shown.values()))["data"]
    metrics = files["metrics/headline/train.json"]["data"]  # the headline: measurements only
    assert metrics["val_fmse"] == pytest.approx(summary["val_fmse"], abs=1e-4)
    assert metrics["composite_val_fmse"] == pytest.approx(summary["composite"]["val_fmse"], abs=1e-4)
    # a new training removes the test headline of the model before it: no stale test numbers shown
    assert "data" not in files.get("metrics/headline/eval.json", {}), files
    numbers = [v for f in files.values() if "data" in f for v in f["data"].values()]
    assert len(numbers) <= 20 and all(isinstance(v, (int, float)) for v in numbers), files
    assert summary["run_id"] not in json.dumps(shown)  # ids and hashes are plain outputs, not metrics

    out = tmp_path / "plots"
    sh([str(BIN / "dvc"), "plots", "show", "-o", str(out)], clone, env)
    html = (out / "index.html").read_text()
    for title in ("Validation PSNR", "Validation fMSE"):  # apart, each with the composite baseline
        assert title in html
    assert "composite_fmse" in html and "composite_psnr" in html and '"epoch"' in html
