"""What ``make pipeline`` produced, and what to run next: its last lines (after DVC's own output).

    python -m pipeline.summary          # reads train.metrics_out, evaluate.summary_out and register.out

Prints the training run, the model's URIs, the registry decision and the champion, then the commands a
user runs next (the MLflow UI, harmonize, serving, experiments). Exit 2 when a stage's output is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("train.metrics_out", "evaluate.summary_out", "register")
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
        f"  python -m components.serving_io serve -m {model} -h 127.0.0.1 -p {SERVE_PORT}",
        "  dvc exp run --queue -S model.generator.head=pct evaluate   # then: dvc exp show --only-changed",
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__, "python -m pipeline.summary", PARAMS).parse_args(argv)
    params = params_from_args(args)
    from components.registration import _read_json  # the stages' JSON, with the same clear errors

    train = _read_json(params.train.metrics_out, "training summary")
    evaluation = _read_json(params.evaluate.summary_out, "evaluation summary")
    registered = _read_json(params.register.out, "registration result")
    print("\n".join(lines(train, evaluation, registered)))
    return 0


if __name__ == "__main__":
    run_cli(main)
