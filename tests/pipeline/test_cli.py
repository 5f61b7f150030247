"""The stage CLIs as a user meets them (subprocess): --help, --tracking-uri, not-found messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from components.config import flatten, load_params

REPO = Path(__file__).resolve().parents[2]
STAGES = ("prepare", "train", "ablate", "evaluate", "register", "harmonize")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every stage's --help, started at once (each is a Python start-up)."""
    procs = {
        s: subprocess.Popen(
            [sys.executable, "-m", f"pipeline.{s}", "--help"],
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for s in STAGES
    }
    return {s: subprocess.CompletedProcess(p.args, p.wait(300), *p.communicate()) for s, p in procs.items()}


@pytest.mark.parametrize("stage", STAGES)
def test_help_names_the_stage_and_lists_its_params_keys(stage, helps):
    import importlib

    res = helps[stage]
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.startswith(f"usage: python -m pipeline.{stage} ")
    assert "``" not in text and ".py" not in text.split("\n", 1)[0]
    sections = importlib.import_module(f"pipeline.{stage}").PARAMS
    flat = flatten(load_params(str(REPO / "params.yaml")).to_dict())
    mine = {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in sections)}
    epilog = text.split("params keys this stage reads", 1)[1]
    listed = [line.strip() for line in epilog.splitlines() if line.strip().startswith("-S ")]
    assert len(listed) == len(mine)  # one example per key, no other section's keys
    for key, value in mine.items():  # each with the value params.yaml gives it
        shown = value if isinstance(value, str) else json.dumps(value)
        assert any(line.startswith(f"-S {key}=") or line.startswith(f"-S '{key}=") for line in listed), key
        if isinstance(value, (int, float, str)) and " " not in str(shown):
            assert f"-S {key}={shown}" in listed, key
    if stage in ("evaluate", "register", "harmonize"):
        assert "--tracking-uri URI" in text


def write_pair(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(folder / "a_mask.png")
    return [str(folder / "a.png"), str(folder / "a_mask.png"), "-o", str(folder / "out.png")]


def test_harmonize_from_another_folder_creates_no_database(tmp_path):
    pair = write_pair(tmp_path)
    res = run(["-m", "pipeline.harmonize", *pair, "-m", "models:/rainnet@champion"], cwd=tmp_path)
    assert res.returncode == 2
    assert "no MLflow store" in res.stderr and "--tracking-uri" in res.stderr and str(tmp_path) in res.stderr
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "out.png").exists()

    missing = tmp_path / "elsewhere" / "mlruns.db"
    res = run(["-m", "pipeline.harmonize", *pair, "-m", "models:/rainnet@champion",
               "--tracking-uri", f"sqlite:///{missing}"], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and f"sqlite:///{missing} does not exist" in res.stderr
    assert not missing.parent.exists()


def test_not_found_messages_name_the_store(tmp_path):
    db = tmp_path / "store.db"
    uri = f"sqlite:///{db}"
    MlflowClient(uri).search_experiments()  # an existing, empty store
    pair = write_pair(tmp_path / "in")
    res = run(["-m", "pipeline.harmonize", *pair, "-m", "models:/rainnet@champion", "--tracking-uri", uri],
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "models:/rainnet@champion" in res.stderr and uri in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr

    (tmp_path / "eval.json").write_text(
        json.dumps({"model_run_id": "0123abcd", "generator": {"name": "rainnet"}})
    )
    res = run(["-m", "pipeline.register", "--params", str(REPO / "params.yaml"), "--tracking-uri", uri,
               "-S", f"register.eval_in={tmp_path / 'eval.json'}"], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "training run 0123abcd not found in MLflow store" in res.stderr
    assert uri in res.stderr

    res = run(["-m", "pipeline.evaluate", "--params", str(REPO / "params.yaml"), "--tracking-uri", uri,
               "-S", "evaluate.model=models:/rainnet@champion"], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "models:/rainnet@champion" in res.stderr and uri in res.stderr


def test_a_misspelt_override_names_the_override_and_the_nearest_key(tmp_path):
    res = run(["-m", "pipeline.train", "--params", str(REPO / "params.yaml"), "-S", "train.lrr=0.1"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: -S train.lrr=0.1: no params key train.lrr; did you mean train.lr?"
    res = run(["-m", "pipeline.evaluate", "--params", str(REPO / "params.yaml"), "-S", "evalute.batch_size=2"],
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "did you mean evaluate.batch_size?" in res.stderr, res.stderr
    # In the params file (what `dvc exp run -S +train.lrr=...` writes): the file, the key, the nearest one.
    text = (REPO / "params.yaml").read_text()
    assert "\n  lr: " in text
    (tmp_path / "params.yaml").write_text(text.replace("\n  lr: ", "\n  lrr: ", 1))
    res = run(["-m", "pipeline.train", "--params", "params.yaml"], cwd=tmp_path)
    assert res.returncode == 2 and "params.yaml: train: unknown key(s) ['lrr']; did you mean 'lr'?" in res.stderr


def test_make_pipeline_ends_on_what_it_produced_and_the_next_commands():
    """The last command of ``make pipeline`` is the summary, and its last lines are the run, the model,
    the champion and the commands to run next (on the pipeline outputs in this checkout)."""
    recipe = (REPO / "Makefile").read_text().split("\npipeline:", 1)[1].split("\n\n", 1)[0]
    assert recipe.strip().splitlines()[-1].strip().endswith("python -m pipeline.summary")
    res = run(["-m", "pipeline.summary"], cwd=REPO)
    assert res.returncode == 0, res.stderr
    train, registered = (json.loads((REPO / "metrics" / f).read_text()) for f in ("train.json", "register.json"))
    tail = res.stdout.strip().splitlines()
    assert tail[0] == "Pipeline done." and len(tail) <= 12
    assert f"runs:/{train['run_id']}/model" in res.stdout
    assert f"{registered['name']} version {registered['version']}" in res.stdout
    if registered["champion_version"]:
        assert f"champion       {registered['name']} version {registered['champion_version']}" in res.stdout
        assert tail[-3].strip().startswith("harmonize ") and f"models:/{registered['name']}@champion" in tail[-3]
    assert tail[-4].strip().startswith("mlflow ui") and "pipeline.serve" in tail[-2]
    assert "dvc push" not in res.stdout
