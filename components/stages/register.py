"""The ``register`` stage's work: put the evaluated model in the MLflow Model Registry, apply the
promotion rule (``components.evaluation.promotion``) and move the ``champion`` / ``challenger`` aliases, write the
model card and ``register.out``. ``pipeline/register.py`` is its command line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from components.errors import UserError
from components.evaluation import promotion
from components.storage import Store
from components.tracking import registry as reg

log = logging.getLogger("register")


def read_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found (run the previous stage first)") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def champion_value_on(evaluation: dict, champion, metric: str, params, store: Store) -> float | None:
    """The champion's overall metric on this evaluation's test set: from its tags, or re-evaluated."""
    if champion.tags.get("test_set") == evaluation["test_set"]:
        return reg.metric_from_tags(champion.tags, metric)
    from components.evaluation import scoring as ev
    from components.inference.predictor import Predictor

    log.info("champion v%s was scored on another test set; re-evaluating it on this one", champion.version)
    data = evaluation["data"]
    if data.startswith("shards:"):
        samples = ev.shard_samples(store, data[len("shards:") :], params.evaluate.split)
    else:
        samples = ev.iharmony4_samples(store, data, params.evaluate.split)
    predictor = Predictor.from_uri(  # the champion at its own training size, scored at native resolution
        f"models:/{champion.name}/{champion.version}", mapping=params.harmonize.mapping,
        device=params.evaluate.device,
    )  # fmt: skip
    rows = ev.evaluate(predictor, samples)
    return ev.summaries(rows)["harmonized"]["overall"][metric]


def run(params) -> dict:
    """Register and maybe promote the model ``register.eval_in`` names (MLflow configured); returns
    the result written to ``register.out``."""
    cfg = params.register
    store = Store.from_config(params.storage)
    try:
        promotion.check(cfg.metric, cfg.mode)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    evaluation = read_json(cfg.eval_in, "evaluation summary")
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

    train_run = reg.training_run(run_id)
    version, created = reg.register_evaluated(name, run_id, evaluation)

    value = evaluation["harmonized"]["overall"][cfg.metric]
    champion = reg.champion(name)
    rule = promotion.rule_text(cfg.metric, cfg.mode)
    decision = promotion.decide(
        value,
        evaluation["composite"]["overall"][cfg.metric],
        version.version,
        champion.version if champion else None,
        lambda: champion_value_on(evaluation, champion, cfg.metric, params, store),
        cfg.metric,
        cfg.mode,
        cfg.beat_composite,
    )
    reg.record_promotion(name, version.version, run_id, decision, created)

    params_run = train_run
    try:
        dataset_card = json.loads(Path(params.prepare.card).read_text())
    except (OSError, ValueError):
        dataset_card = None
    card = reg.model_card(name, version.version, evaluation, params_run, dataset_card, decision, rule)
    reg.describe_version(name, version.version, card)
    champion_now = reg.champion(name)
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
        store.write_bytes(path, text.encode())
    showcase = Path(params.evaluate.showcase_out)  # what the version does to test composites
    reg.attach_card(evaluation.get("eval_run_id"), card, run_id, str(showcase) if showcase.is_file() else None,
                    version.version)  # fmt: skip
    log.info(
        "%s v%s (%s): %s -> aliases %s",
        name, version.version, "new" if created else "already registered", decision.reason, decision.aliases,
    )  # fmt: skip
    return result
