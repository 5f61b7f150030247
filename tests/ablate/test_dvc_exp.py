"""``dvc exp run --temp`` of one placement: the temporary workspace gets the dataset from DVC (prepare's
output) and tracks into the project's MLflow."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.train.test_dvc_train import BIN, sh, tiny_project

pytestmark = pytest.mark.slow


def test_dvc_exp_run_temp_of_one_placement(tmp_path):
    clone = tmp_path / "clone"
    env = tiny_project(clone, sample_grid=0)
    sh(["git", "init", "-q"], clone, env)
    sh([str(BIN / "dvc"), "repro", "prepare"], clone, env, timeout=300)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "clone + prepare"], clone, env)

    sh([str(BIN / "dvc"), "exp", "run", "--temp", "-S", "model.generator.placement=rain-2", "train"], clone, env,
       timeout=480)  # fmt: skip
    client = MlflowClient(f"sqlite:///{clone / 'mlruns.db'}")  # the project's database, not the temp copy's
    exp = client.get_experiment_by_name("harmonization-train")
    runs = client.search_runs([exp.experiment_id])
    assert [r.data.tags["placement"] for r in runs] == ["rain-2"]
    assert runs[0].info.status == "FINISHED"
    shown = sh([str(BIN / "dvc"), "exp", "show", "--json"], clone, env).stdout
    assert "rain-2" in shown and "metrics/headline/train.json" in shown and "val_fmse" in shown


def exp_rows(shown: list) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name (the baseline: ``workspace`` / its commit) -> its metrics
    files' numbers and its params, flattened to ``file:key``."""
    rows = {}
    for commit in shown:
        for rev in [commit, *[e for exp in commit.get("experiments") or [] for e in exp.get("revs", [])]]:
            data = rev.get("data") or {}
            flat = {f"{f}:{k}": v for f, d in (data.get("metrics") or {}).items()
                for k, v in (d.get("data") or {}).items()}  # a file the experiment lacks: an error, no data
            flat.update({f"params:{k}": v for k, v in _flat(data.get("params", {}).get("params.yaml", {})
                                                           .get("data", {})).items()})  # fmt: skip
            rows[rev.get("name") or rev["rev"]] = flat
    return rows


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_queued_experiments_show_their_own_metrics_or_none(tmp_path):
    """``dvc exp run --queue``: an experiment that trains without evaluating shows no test numbers (not
    the baseline model's), one queued up to ``evaluate`` shows its own model's, the one MLflow recorded."""
    import json

    clone = tmp_path / "clone"
    env = tiny_project(clone, sample_grid=0)
    sh(["git", "init", "-q"], clone, env)
    sh([str(BIN / "dvc"), "repro", "evaluate"], clone, env, timeout=600)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "baseline: prepare, train, evaluate"], clone, env)

    dvc = str(BIN / "dvc")
    sh([dvc, "exp", "run", "--queue", "-n", "trained", "-S", "model.generator.placement=rain-2", "train"],
       clone, env)  # fmt: skip
    sh([dvc, "exp", "run", "--queue", "-n", "evaluated", "-S", "model.generator.placement=rain-2",
        "-S", "train.seed=1", "evaluate"], clone, env)  # fmt: skip
    sh([dvc, "exp", "run", "--run-all", "-j", "1"], clone, env, timeout=1200)
    rows = exp_rows(json.loads(sh([dvc, "exp", "show", "--json"], clone, env).stdout))
    test_key, val_key = "metrics/headline/eval.json:test_fmse", "metrics/headline/train.json:val_fmse"
    base = rows["workspace"]
    assert {"trained", "evaluated"} <= set(rows), sorted(rows)
    assert test_key in base and test_key not in rows["trained"], rows["trained"]  # none, not the baseline's
    assert rows["trained"][val_key] != base[val_key]  # its own training
    assert rows["evaluated"][test_key] != base[test_key]

    client = MlflowClient(f"sqlite:///{clone / 'mlruns.db'}")
    exp = client.get_experiment_by_name("harmonization-eval")
    evals = {round(r.data.metrics["test_fmse"], 4) for r in client.search_runs([exp.experiment_id])}
    assert round(rows["evaluated"][test_key], 4) in evals  # what its own evaluation measured
    assert rows["evaluated"]["params:train.seed"] == 1 and rows["trained"]["params:train.seed"] == 0
