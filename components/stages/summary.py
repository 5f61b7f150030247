"""What ``make pipeline`` produced, and what to run next: the training run, the model's URIs, the registry
decision and the champion, then the commands a user runs next (the MLflow UI, harmonize, serving,
experiments). Read from the stage outputs ``train.metrics_out``, ``evaluate.summary_out`` and
``register.out``."""

from __future__ import annotations

from components.config import Params
from components.stages.register import read_json

UI_PORT, SERVE_PORT = 5000, 5001  # distinct: `mlflow ui` and the model server run side by side


def lines(train: dict, evaluation: dict, registered: dict) -> list[str]:
    """The summary lines from the three stages' outputs."""
    name, version, metric = registered["name"], registered["version"], registered["metric"]
    composite = (evaluation.get("composite") or {}).get("overall", {}).get(metric)
    vs = f" (composite {composite:.1f})" if composite is not None else ""
    champion = registered.get("champion_version")
    decision = "promoted to champion" if registered["promoted"] else f"not promoted: {registered['reason']}"
    model = f"models:/{name}@champion" if champion else f"models:/{name}/{version}"
    out = [
        "",
        "Pipeline done.",
        f"  training run   {train['run_id']} ({train.get('run_name')}, experiment {train.get('experiment')})",
        f"  model          runs:/{train['run_id']}/model = {name} version {version}",
        f"  test {metric:<9} {registered['value']:.1f}{vs}; {decision}",
        f"  champion       {f'{name} version {champion} ({model})' if champion else 'none yet'}",
        "Next (after: source .venv/bin/activate):",
        f"  mlflow ui --backend-store-uri sqlite:///mlruns.db --port {UI_PORT}",
        f"  harmonize composite.jpg mask.png -o out.png -m {model}",
        f"  python -m pipeline.serve -m {model} -p {SERVE_PORT}",
        "  dvc exp run --queue -S model.generator.head=pct evaluate   # then: dvc exp show --only-changed",
    ]
    return out


def run(params: Params) -> list[str]:
    """The summary lines; ``UserError`` (exit 2) when a stage's output is missing."""
    train = read_json(params.train.metrics_out, "training summary")
    evaluation = read_json(params.evaluate.summary_out, "evaluation summary")
    registered = read_json(params.register.out, "registration result")
    return lines(train, evaluation, registered)
