"""MLflow helpers against a real MLflow: the default sqlite store in a tmp project, and a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components import tracking as T
from components.config import Params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_mlflow(monkeypatch):
    """configure() sets global MLflow state and os.environ: tests/conftest.py's ``_mlflow_uris`` puts
    the URIs back after each test; this ends the test's runs and forgets its configure()."""
    monkeypatch.delenv(T.ENV_VAR, raising=False)
    monkeypatch.delenv(T.REGISTRY_ENV_VAR, raising=False)  # a session fixture's (tests/serve: the server)
    yield
    while mlflow.active_run():
        mlflow.end_run()
    T._configured = None


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A tmp project root (has params.yaml), entered from a subfolder as a stage might be."""
    (tmp_path / "params.yaml").write_text("{}\n")
    sub = tmp_path / "pipeline"
    sub.mkdir()
    monkeypatch.chdir(sub)
    return tmp_path


def test_default_uri_is_absolute_sqlite_in_project_root(project, monkeypatch):
    assert T.tracking_uri() == f"sqlite:///{project / 'mlruns.db'}"
    monkeypatch.chdir(project.parent)  # no params.yaml at or above: the working directory
    assert T.project_root() == project.parent.resolve()
    monkeypatch.setenv(T.ENV_VAR, "http://mlflow.example:5000")
    assert T.tracking_uri() == "http://mlflow.example:5000"
    monkeypatch.setenv(T.ENV_VAR, "sqlite:///rel/runs.db")  # relative sqlite made absolute
    assert T.tracking_uri() == f"sqlite:///{project.parent.resolve() / 'rel' / 'runs.db'}"


def test_sqlite_default_end_to_end(project):
    uri = T.configure()
    assert uri == f"sqlite:///{project / 'mlruns.db'}"
    assert os.environ[T.ENV_VAR] == uri and T.worker_env() == {T.ENV_VAR: uri}
    assert mlflow.get_registry_uri() == uri

    exp = T.get_or_create_experiment("harmonization-train")
    assert T.get_or_create_experiment("harmonization-train").experiment_id == exp.experiment_id
    assert exp.artifact_location == (project / "mlartifacts" / "harmonization-train").as_uri()

    tags = {"model": "rainnet", "placement": "rain-decoder"}
    with T.start_or_resume_run("harmonization-train", "rainnet-rain-decoder-default", tags) as run:
        mlflow.log_metric("val_fmse", 12.5)
        mlflow.log_text("hello", "notes.txt")
    assert (project / "mlruns.db").is_file()
    stored = list((project / "mlartifacts" / "harmonization-train").rglob("notes.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"

    found = T.find_run_by_name("harmonization-train", "rainnet-rain-decoder-default")
    assert found.info.run_id == run.info.run_id
    assert T.find_run_by_name("harmonization-train", "no-such-run") is None
    assert T.find_run_by_name("no-such-experiment", "rainnet-rain-decoder-default") is None

    # Resuming reopens the same run instead of creating a second one.
    with T.start_or_resume_run("harmonization-train", "rainnet-rain-decoder-default", {"x": "1"}) as again:
        mlflow.log_metric("val_fmse", 10.0, step=1)
    assert again.info.run_id == run.info.run_id
    runs = MlflowClient().search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["x"] == "1" and runs[0].data.tags["model"] == "rainnet"
    with T.start_or_resume_run("harmonization-train", "rainnet-rain-decoder-default", resume=False):
        pass
    assert len(MlflowClient().search_runs([exp.experiment_id])) == 2


def test_child_process_in_another_copy_tracks_to_the_same_store(project, tmp_path_factory, monkeypatch):
    """A Ray worker may run in a copy of the repo (its own params.yaml): the exported URI wins."""
    uri = T.configure()
    copy = tmp_path_factory.mktemp("worker_copy")
    (copy / "params.yaml").write_text("{}\n")
    code = "from components import tracking as T; print(T.tracking_uri())"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == uri
    monkeypatch.delenv(T.ENV_VAR)  # without it a copy gets its own database: what worker_env() prevents
    monkeypatch.chdir(copy)
    assert T.tracking_uri() == f"sqlite:///{copy.resolve() / 'mlruns.db'}"


def test_configure_exports_the_tracking_uri_only(project, tmp_path):
    """MLflow's own setters also export MLFLOW_REGISTRY_URI (and do so for export_env=False too): left in
    os.environ, it would send the registry calls of a later client or child process given another
    tracking URI to this store, and a reader's URI would become the next configure()'s default."""
    uri = T.configure()
    assert os.environ[T.ENV_VAR] == uri and T.REGISTRY_ENV_VAR not in os.environ
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == uri
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert T.configure(other, export_env=False) == other
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == other
    assert os.environ[T.ENV_VAR] == uri and T.REGISTRY_ENV_VAR not in os.environ
    assert T.configure() == uri


def test_log_params_flat_is_idempotent_and_guards_changes(project):
    T.configure()
    params = Params().to_dict()
    params["prepare"]["methods"] = ["m" * 40] * 20  # an 800+ character value
    params["extra"] = {f"k{i}": i for i in range(60)}  # > 100 params: more than one log_batch
    with mlflow.start_run(experiment_id=T.get_or_create_experiment("p").experiment_id) as run:
        new = T.log_params_flat(params)
        assert T.log_params_flat(params) == {}  # same values again (a resumed run): nothing, no error
        logged = MlflowClient().get_run(run.info.run_id).data.params
        assert logged["train.epochs"] == "10" and logged["train.gan"] == "false"
        assert logged["model.generator.name"] == "rainnet"
        assert logged["train.max_steps_per_epoch"] == "null"
        assert len(logged) == len(new) > 100 and logged["extra.k59"] == "59"
        long = logged["prepare.methods"]
        assert len(long) == T.PARAM_VALUE_LIMIT and long.endswith("[truncated]")

        params["train"]["epochs"] = 3
        params["train"]["lr"] = 0.1
        with pytest.raises(ValueError, match=r"train\.epochs: logged '10', now '3'"):
            T.log_params_flat(params)
        params["train"]["new_key"] = 1
        assert T.log_params_flat(params, on_conflict="keep") == {"train.new_key": "1"}
        assert MlflowClient().get_run(run.info.run_id).data.params["train.epochs"] == "10"


def test_git_commit_inside_and_outside_git(tmp_path):
    info = T.git_commit(REPO)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert info.commit == head.stdout.strip() and len(info.commit) == 40
    assert info.short == info.commit[:8] and isinstance(info.dirty, bool)
    assert T.git_commit(tmp_path) == T.GitInfo("unknown", "unknown", None)


def test_git_dirty_flag(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert T.git_commit(tmp_path).dirty is False
    (tmp_path / "untracked.txt").write_text("x")
    assert T.git_commit(tmp_path).dirty is False  # untracked files do not count
    (tmp_path / "f.txt").write_text("b")
    assert T.git_commit(tmp_path).dirty is True


def test_standard_tags_and_run_names():
    params = Params()
    tags = T.standard_tags(params, "abc123", dataset="default")
    assert tags["model"] == "rainnet" and tags["placement"] == "rain-decoder"
    assert tags["dataset_hash"] == "abc123" and tags["dataset"] == "default"
    assert tags["git_commit"] == T.git_commit().commit
    assert all(isinstance(v, str) for v in tags.values())
    d = params.to_dict()
    d["model"]["generator"] = {"name": "dih", "mask_head": True}
    assert T.standard_tags(d, None)["placement"] == "none"
    assert T.standard_tags(d, None)["dataset_hash"] == "unknown"

    assert T.run_name({"name": "rainnet", "placement": "rain-decoder"}, "default") == (
        "rainnet-rain-decoder-default"
    )
    assert T.run_name({"name": "dih"}, "default") == "dih-default"
    assert T.run_name({"name": "dih_rain"}, "default") == "dih_rain-default"


@pytest.mark.slow
def test_against_a_real_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(T.ENV_VAR, mlflow_server)
    assert T.configure() == mlflow_server
    exp = T.get_or_create_experiment("harmonization-eval")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server decides
    assert not (tmp_path / "mlartifacts").exists()
    with T.start_or_resume_run("harmonization-eval", "dih-default", T.standard_tags(Params(), "h")) as run:
        T.log_params_flat({"evaluate": {"batch_size": 16}})
        mlflow.log_metrics({"test_fmse": 1.5, "test_fmse.HCOCO": 2.0})
        mlflow.log_dict({"a": 1}, "summary.json")
    found = T.find_run_by_name("harmonization-eval", "dih-default")
    assert found.info.run_id == run.info.run_id
    assert found.data.metrics["test_fmse.HCOCO"] == 2.0 and found.data.tags["dataset_hash"] == "h"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="summary.json")
    assert json.loads(Path(path).read_text()) == {"a": 1}


def test_what_a_training_run_shows_in_the_ui(project, tmp_path):
    """Experiment description, params of the sections that shaped the run, the dataset as an input
    (content hash as digest, manifest as source), per-step losses apart from per-epoch curves, the
    sample grid as a stepped image and at the root, and test results carried back from evaluation."""
    import io

    import numpy as np
    from PIL import Image

    from components.tracking.training_log import RankZeroLogger, find_or_create_run

    uri = T.configure()
    params = Params()
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    digest = "ab" * 32
    dataset = {"name": "default", "digest": digest, "source": str(manifest), "profile": {"content_hash": digest}}
    run_id, resumed = find_or_create_run("harmonization-train", "r", "key-1", {}, params, dataset=dataset)
    client = MlflowClient()
    exp = client.get_experiment_by_name("harmonization-train")
    assert "Training runs" in exp.tags[T.NOTE_TAG]
    run = client.get_run(run_id)
    sections = {k.split(".", 1)[0] for k in run.data.params}
    assert sections == {"prepare", "model", "train"}, sections  # no evaluate.*, register.*, harmonize.*
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "default" and digest.startswith(inp.dataset.digest)
    assert json.loads(inp.dataset.source)["uri"] == str(manifest.resolve())
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    # A resumed run gets no second input.
    assert find_or_create_run("harmonization-train", "r", "key-1", {}, params, dataset=dataset) == (run_id, True)
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 1

    logger = RankZeroLogger(uri, run_id, enabled=True, system_metrics=False)
    logger.log_step(7, {"loss_g": 1.5})
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(buf, format="PNG")
    assert logger.log_epoch(1, {"val_fmse": 300.0}, {"samples/epoch_001.png": buf.getvalue()})
    logger.close()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss_g")] == [(7, 1.5)]
    assert [m.step for m in client.get_metric_history(run_id, "val_fmse")] == [1]
    assert "loss_g" not in client.get_run(run_id).data.metrics
    root = {f.path for f in client.list_artifacts(run_id)}
    assert "samples.png" in root and "images" in root  # latest grid at the root; log_image's folder
    assert any(f.path.startswith("images/samples+step+1+") for f in client.list_artifacts(run_id, "images"))

    summary = {
        "harmonized": {"overall": {"mse": 10.0, "psnr": 30.0, "fmse": 200.0, "fpsnr": 25.0}},
        "composite": {"overall": {"mse": 20.0, "psnr": 28.0, "fmse": 400.0, "fpsnr": 22.0}},
        "test_set": "ts1", "eval_run_id": "e1", "data": "shards:default",
    }  # fmt: skip
    T.carry_test_results(run_id, summary)
    T.carry_test_results("no-such-run", summary)  # a model trained elsewhere: a warning, no error
    run = client.get_run(run_id)
    assert run.data.metrics["test_fmse"] == 200.0 and run.data.metrics["test_composite_fmse"] == 400.0
    assert run.data.tags["test_set"] == "ts1" and run.data.tags["eval_run_id"] == "e1"


def test_two_runs_logging_one_new_dataset_at_once_both_get_it(project):
    """Ray Tune trials started together log the same new dataset: the one that loses the race to
    insert it (unique per experiment, name and digest) links the row the other wrote. The race is made
    exact here: the other run's insert is committed right before this run's insert runs."""
    from sqlalchemy import event

    T.configure()
    client = MlflowClient()
    exp = T.get_or_create_experiment("harmonization-ablation", client)
    mine, other = (client.create_run(exp.experiment_id).info.run_id for _ in range(2))
    engine = client._tracking_client.store.engine
    raced = []

    def other_run_wins(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not raced:
            raced.append(statement)
            T.log_dataset_input(other, "tiny", "a" * 64, str(project), client=MlflowClient())

    event.listen(engine, "before_cursor_execute", other_run_wins)
    try:
        T.log_dataset_input(mine, "tiny", "a" * 64, str(project), client=client)
    finally:
        event.remove(engine, "before_cursor_execute", other_run_wins)
    assert raced, "the store never inserted the dataset: the race was not exercised"
    inputs = [client.get_run(r).inputs.dataset_inputs for r in (mine, other)]
    assert [[(d.dataset.name, d.dataset.digest) for d in i] for i in inputs] == [[("tiny", "a" * 36)]] * 2


def test_git_dirty_is_about_the_code_not_the_outputs_the_pipeline_rewrites(tmp_path):
    """A run of the pipeline rewrites its committed outputs (dvc.lock, metrics/, reports/) as it goes;
    the runs it logs are still of clean code. A modified source file makes them dirty."""
    import shutil

    from components.tracking import git_commit

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "dvc.yaml", tmp_path / "dvc.yaml")
    for rel in ("dvc.lock", "metrics/train.json", "reports/ablation.md", "pipeline/train.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("committed\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, env={**os.environ, **env})
    assert git_commit(tmp_path).dirty is False
    for rel in ("dvc.lock", "metrics/train.json", "reports/ablation.md"):
        (tmp_path / rel).write_text("rewritten by the run\n")
    assert git_commit(tmp_path).dirty is False
    (tmp_path / "pipeline/train.py").write_text("edited\n")
    assert git_commit(tmp_path).dirty is True
