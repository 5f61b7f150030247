"""Stage ``register``: put the evaluated model in the MLflow Model Registry and promote it by alias.

    python -m pipeline.register                      # the model evaluate scored (metrics/eval.json)

The version gets the evaluation metrics, test set id, dataset card hash and placement as tags and the
model card (``reports/model_card.md``) as its description. New versions become ``challenger``; one
becomes ``champion`` only when it strictly beats the champion on the same test set by ``register.metric``
/ ``register.mode`` (the champion is re-evaluated on this test set when its tags are for another one), and
(``register.beat_composite``) also beats the unharmonized composite there.
Rerunning for the same training run registers nothing new. Writes ``metrics/register.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from components import registry_mlflow as reg
from components import storage, tracking
from components.cli import UserError, base_parser, params_from_args, run_cli

log = logging.getLogger("register")


def _read_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found (run the previous stage first)") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def champion_value_on(evaluation: dict, champion, metric: str, params) -> float | None:
    """The champion's overall metric on this evaluation's test set: from its tags, or re-evaluated."""
    if champion.tags.get("test_set") == evaluation["test_set"]:
        return reg.metric_from_tags(champion.tags, metric)
    from components import evaluation as ev
    from components.checkpoint import load_generator
    from components.predictor import Predictor

    log.info("champion v%s was scored on another test set; re-evaluating it on this one", champion.version)
    s3 = storage.S3Options.from_config(params.storage)
    data = evaluation["data"]
    if data.startswith("shards:"):
        samples = ev.shard_samples(params.storage.root, data[len("shards:") :], params.evaluate.split, s3)
    else:
        samples = ev.iharmony4_samples(data, params.evaluate.split, s3)
    model, info = load_generator(f"models:/{champion.name}/{champion.version}")
    predictor = Predictor(  # the champion at its own training size, scored at native resolution
        model, int(info["image_size"]), mapping=params.harmonize.mapping, device=params.evaluate.device
    )
    rows = ev.evaluate(predictor, samples, s3)
    return ev.summaries(rows)["harmonized"]["overall"][metric]


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0])
    params = params_from_args(parser.parse_args(argv))
    cfg = params.register
    if cfg.mode not in ("min", "max"):
        raise UserError(f"register.mode={cfg.mode!r}: expected min or max")
    evaluation = _read_json(cfg.eval_in, "evaluation summary")
    if cfg.metric not in evaluation["harmonized"]["overall"]:
        raise UserError(f"register.metric={cfg.metric!r}: not an evaluation metric (mse, psnr, fmse, fpsnr)")
    run_id = evaluation.get("model_run_id")
    if not run_id:
        raise UserError(
            f"{cfg.eval_in}: the evaluated model ({evaluation.get('model_uri')}) has no MLflow training run; "
            "only models logged by train can be registered"
        )
    try:
        name = cfg.model_name or reg.registered_name(evaluation.get("generator") or {})
    except ValueError as exc:
        raise UserError(str(exc)) from None

    tracking.configure()
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        train_run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MlflowException for a run that is not in this store
        raise UserError(f"training run {run_id} not found in {tracking.tracking_uri()}: {exc}") from None

    version, created = reg.register_run_model(client, name, run_id)
    for k, v in reg.version_tags(evaluation).items():
        client.set_model_version_tag(name, version.version, k, v)

    value = evaluation["harmonized"]["overall"][cfg.metric]
    champion = reg.alias_version(client, name, reg.CHAMPION)
    rule = (
        f"lower overall test {cfg.metric} wins"
        if cfg.mode == "min"
        else f"higher overall test {cfg.metric} wins"
    )
    baseline = evaluation["composite"]["overall"][cfg.metric]
    if cfg.beat_composite and not reg.better(value, baseline, cfg.mode):
        decision = reg.Decision(
            False, f"{cfg.metric} {value:.4f} does not beat the unharmonized composite's {baseline:.4f}"
        )
    elif champion is None:
        decision = reg.Decision(True, "no champion yet")
    elif champion.version == version.version:
        decision = reg.Decision(False, "already the champion", champion.version, value)
    else:
        old = champion_value_on(evaluation, champion, cfg.metric, params)
        win = reg.better(value, old, cfg.mode)
        why = (
            f"{cfg.metric} {value:.4f} vs champion v{champion.version} {old:.4f}"
            if old is not None
            else "champion unscored"
        )
        decision = reg.Decision(win, why, champion.version, old)
    if created:
        client.set_registered_model_alias(name, reg.CHALLENGER, version.version)
    if decision.promoted:
        client.set_registered_model_alias(name, reg.CHAMPION, version.version)
    decision.aliases = sorted(client.get_model_version(name, version.version).aliases)

    params_run = {
        "run_name": train_run.info.run_name,
        "params": train_run.data.params,
    }
    try:
        dataset_card = json.loads(Path(params.prepare.card).read_text())
    except (OSError, ValueError):
        dataset_card = None
    card = reg.model_card(name, version.version, evaluation, params_run, dataset_card, decision, rule)
    reg.set_description(client, name, version.version, card)
    champion_now = reg.alias_version(client, name, reg.CHAMPION)
    result = {
        "name": name,
        "version": int(version.version),
        "new_version": created,
        "run_id": run_id,
        "aliases": decision.aliases,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "champion_version": int(champion_now.version) if champion_now else None,
        "previous_champion": int(decision.previous_champion) if decision.previous_champion else None,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "value": value,
        "champion_value": decision.champion_value,
        "test_set": evaluation["test_set"],
    }
    for path, text in ((cfg.card_out, card), (cfg.out, json.dumps(result, indent=2) + "\n")):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        storage.write_bytes_atomic(path, text.encode())
    if evaluation.get("eval_run_id"):
        client.log_text(evaluation["eval_run_id"], card, "model_card.md")
    showcase = Path(params.evaluate.showcase_out)
    if showcase.is_file():  # what the version does to test composites, beside the version's model
        client.log_artifact(run_id, str(showcase), f"showcase/v{version.version}")
    log.info(
        "%s v%s (%s): %s -> aliases %s",
        name, version.version, "new" if created else "already registered", decision.reason, decision.aliases,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    run_cli(main)
