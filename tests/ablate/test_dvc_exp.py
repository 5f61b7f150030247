"""``dvc exp run --temp`` and ``--queue`` of one placement in one project: each temporary workspace gets the
dataset from DVC (prepare's output) and tracks into the project's MLflow; each experiment's row shows its
own numbers or none. One project and one baseline serve both (each dvc repro trains on a Ray of its own)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.train.test_dvc_train import BIN, sh, tiny_project

# three trainings and two evaluations in one test: more than the suite's default per-test limit on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


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


def test_temp_and_queued_experiments_track_into_the_project_and_show_their_own_metrics_or_none(tmp_path):
    """A baseline (prepare, train, evaluate) committed; ``dvc exp run --temp`` up to ``train`` shows its own
    validation numbers and no test numbers (not the baseline model's); one queued up to ``evaluate``
    (``--queue``, ``--run-all``) shows its own model's, the one MLflow recorded. Both track into the
    project's MLflow database, not their temporary copy's."""
    import json

    clone = tmp_path / "clone"
    env = tiny_project(clone, sample_grid=0)
    sh(["git", "init", "-q"], clone, env)
    sh([str(BIN / "dvc"), "repro", "evaluate"], clone, env, timeout=900)
    sh(["git", "add", "-A"], clone, env)
    sh(["git", "commit", "-q", "-m", "baseline: prepare, train, evaluate"], clone, env)

    dvc = str(BIN / "dvc")
    sh([dvc, "exp", "run", "--temp", "-n", "trained", "-S", "model.generator.placement=rain-2", "train"], clone,
       env, timeout=480)  # fmt: skip
    sh([dvc, "exp", "run", "--queue", "-n", "evaluated", "-S", "model.generator.placement=rain-2",
        "-S", "train.seed=1", "evaluate"], clone, env)  # fmt: skip
    sh([dvc, "exp", "run", "--run-all", "-j", "1"], clone, env, timeout=1200)
    shown = sh([dvc, "exp", "show", "--json"], clone, env).stdout
    rows = exp_rows(json.loads(shown))
    test_key, val_key = "metrics/headline/eval.json:test_fmse", "metrics/headline/train.json:val_fmse"
    base = rows["workspace"]
    assert {"trained", "evaluated"} <= set(rows), sorted(rows)
    assert test_key in base and test_key not in rows["trained"], rows["trained"]  # none, not the baseline's
    assert rows["trained"][val_key] != base[val_key]  # its own training
    assert rows["evaluated"][test_key] != base[test_key]
    assert rows["trained"]["params:model.generator.placement"] == "rain-2"

    client = MlflowClient(f"sqlite:///{clone / 'mlruns.db'}")  # the project's database, not a temp copy's
    train_exp = client.get_experiment_by_name("harmonization-train")
    runs = client.search_runs([train_exp.experiment_id])
    # the baseline's training and one per experiment, each tracked here and finished
    placements = sorted(["rain-2", "rain-2", base["params:model.generator.placement"]])
    assert sorted(r.data.tags["placement"] for r in runs) == placements
    assert {r.info.status for r in runs} == {"FINISHED"}
    exp = client.get_experiment_by_name("harmonization-eval")
    evals = {round(r.data.metrics["test_fmse"], 4) for r in client.search_runs([exp.experiment_id])}
    assert round(rows["evaluated"][test_key], 4) in evals  # what its own evaluation measured
    assert rows["evaluated"]["params:train.seed"] == 1 and rows["trained"]["params:train.seed"] == 0
