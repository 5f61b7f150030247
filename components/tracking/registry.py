"""MLflow Model Registry: register a trained generator once, tag it, and promote it by alias.

Aliases, never the deprecated stages: each newly registered version becomes ``challenger`` (the latest
candidate); it also becomes ``champion`` only when it strictly beats the current champion on the same test
set by the params rule (``register.metric`` in ``register.mode``). The previous champion keeps its version
number and tags; only the alias moves. Registering is idempotent: a training run that already has a
version gets no second one.
"""

from __future__ import annotations

import logging

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.checkpoint import HASH_TAG, CheckpointError, nonfinite_keys
from components.errors import UserError
from components.evaluation import metrics
from components.evaluation.promotion import Decision
from components.tracking.model_files import model_record, read_payload

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
DESCRIPTION_LIMIT = 5000  # MLflow's stores cap version descriptions at 5000 characters


def registered_name(generator_spec: dict) -> str:
    """``rainnet`` for RainNet, ``dih`` for DIH and DIH + RAIN (the registry has one name per family)."""
    name = str(generator_spec.get("name", ""))
    if name == "rainnet":
        return "rainnet"
    if name.startswith("dih"):
        return "dih"
    raise ValueError(f"no registered model name for generator {name!r}; set register.model_name")


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def versions_for_run(client: MlflowClient, name: str, run_id: str) -> list[ModelVersion]:
    """Every version of ``name`` registered from ``run_id``."""
    return client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")


def version_for_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The (oldest) version of ``name`` registered from ``run_id``, if any."""
    found = versions_for_run(client, name, run_id)
    return min(found, key=lambda v: int(v.version)) if found else None


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def logged_model_id(client: MlflowClient, run_id: str, artifact_path: str = "model") -> str:
    """The id of the model ``run_id`` logged as ``artifact_path`` (the latest, if it logged several).

    MLflow 3 keeps a logged model under ``models:/<model_id>``, not in the run's artifacts: registering
    ``runs:/<run_id>/model`` made MLflow look there, find nothing and warn ("Run ... has no artifacts at
    artifact path 'model', registering model based on models:/m-... instead") on every registration."""
    run = client.get_run(run_id)
    step = {o.model_id: o.step for o in (run.outputs.model_outputs if run.outputs else [])}
    found, token = [], None
    while True:
        page = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"name = '{artifact_path}' AND source_run_id = '{run_id}'",
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            break
    if not found:
        raise UserError(f"runs:/{run_id}/{artifact_path}: not registered: the run logged no model {artifact_path!r}")
    return max(found, key=lambda m: (step.get(m.model_id, -1), m.creation_timestamp)).model_id


def register_run_model(client: MlflowClient, name: str, run_id: str, artifact_path: str = "model"):
    """(version, created): the version of the model the run logged last, registered when it has none. A
    run that logged another file since (a calibration fitted again) gets a new version for it."""
    model_id = logged_model_id(client, run_id, artifact_path)
    digest = client.get_run(run_id).data.tags.get(HASH_TAG)  # the file the run logged last

    def same_file(v: ModelVersion) -> bool:  # a version keeps its own file's hash (set below)
        tag = v.tags.get(HASH_TAG)
        return tag == digest if tag and digest else getattr(v, "model_id", None) in (model_id, None)

    existing = [v for v in versions_for_run(client, name, run_id) if same_file(v)]
    if existing:
        return min(existing, key=lambda v: int(v.version)), False
    check_registrable(f"runs:/{run_id}/{artifact_path}")  # checked against the hash the run recorded
    ensure_registered_model(client, name)
    # the client call, not mlflow.register_model: the same version (source, run, logged model), without
    # the fluent API's "Registered model ... already exists" / "Created version" lines on stderr
    mv = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    # The version keeps the hash of its own file (its logged model's record, else its run's), whatever
    # the run logs later.
    digest = model_record(f"models:/{name}/{mv.version}").sha256
    if digest:
        client.set_model_version_tag(name, mv.version, HASH_TAG, digest)
    return client.get_model_version(name, mv.version), True


def check_registrable(uri: str) -> None:
    """``UserError`` (exit 2) unless the model's generator file matches its recorded hash and its weights
    are finite: a diverged (NaN) or tampered model never gets a version."""
    try:
        payload = read_payload(uri)
    except CheckpointError as exc:
        raise UserError(f"not registered: {exc}") from None
    bad = nonfinite_keys(payload["state_dict"])
    if bad:
        raise UserError(f"{uri}: not registered: the weights are not finite ({', '.join(bad[:3])}, ...)")


def record_decision(client: MlflowClient, name: str, version: str, run_id: str, decision: Decision) -> None:
    """The promotion decision on the version (tags) and on its training run (tags), beside the test
    metrics there: the run and model-version compare pages show why a version is or is not champion."""
    from components import tracking

    tags = {
        "promoted": str(decision.promoted).lower(),
        "promotion_reason": decision.reason,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    tracking.tag_run(run_id, {**tags, "registered_model": name, "registered_version": version}, client)


def version_tags(evaluation: dict, extra: dict | None = None) -> dict[str, str]:
    """Version tags: overall test metrics, test set, dataset hash, placement, links to the runs."""
    gen = evaluation.get("generator") or {}
    tags = {
        k: f"{v:.6g}"
        for k, v in metrics.flatten_summary(evaluation["harmonized"], "test", groups=False).items()
    }
    tags.update(
        {
            "test_set": str(evaluation.get("test_set")),
            "test_data": str(evaluation.get("data")),
            "image_size": str(evaluation.get("image_size")),
            "dataset_hash": str(evaluation.get("dataset_hash") or "unknown"),
            "model": str(gen.get("name", "unknown")),
            "placement": str(gen.get("placement") or "none"),
            "eval_run_id": str(evaluation.get("eval_run_id")),
        }
    )
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def metric_from_tags(tags: dict, metric: str) -> float | None:
    value = tags.get(f"test_{metric}")
    return float(value) if value is not None else None


def set_description(client: MlflowClient, name: str, version: str, text: str) -> None:
    if len(text) > DESCRIPTION_LIMIT:
        text = (
            text[: DESCRIPTION_LIMIT - 80] + "\n\n(... cut; the full model card is reports/model_card.md)\n"
        )
    client.update_model_version(name, version, description=text)


def model_card(
    name: str,
    version: str,
    evaluation: dict,
    train_run: dict,
    dataset_card: dict | None,
    decision: Decision,
    rule: str,
) -> str:
    """The model card in markdown. The version page shows its first lines, so they are what a reader
    decides on: the test numbers against the composite and the promotion decision; the detail follows."""
    gen = evaluation.get("generator") or {}
    size = evaluation.get("image_size")
    head = gen.get("head", "image")
    ours, comp = evaluation["harmonized"]["overall"], evaluation["composite"]["overall"]

    def vs(metric: str) -> str:
        a, b = ours.get(metric), comp.get(metric)
        if a is None or b is None:
            return f"{metric} -"
        ratio = f", {a / b:.2f}x" if metric.endswith("mse") and b else ""
        return f"{metric} **{a:.2f}** (composite {b:.2f}{ratio})"

    verdict = "**promoted to champion**" if decision.promoted else "**not promoted**"
    lines = [
        f"# {name} version {version}",
        "",
        f"Test {vs('fmse')}; {vs('psnr')}; {vs('mse')}; {vs('fpsnr')}: {evaluation.get('n_images')} "
        f"images of `{evaluation.get('data')}` at native resolution (test set `{evaluation.get('test_set')}`).",
        "",
        f"Decision: {verdict}, {decision.reason}. Rule: {rule}.",
        "",
        "## Model and data",
        "",
        f"- generator `{gen.get('name')}`, placement `{gen.get('placement') or 'none'}`, head `{head}`, "
        f"trained at {size}x{size}",
        f"- training run `{train_run.get('run_name')}` (`{evaluation.get('model_run_id')}`), evaluation run "
        f"`{evaluation.get('eval_run_id')}`",
        f"- dataset content hash: `{evaluation.get('dataset_hash') or 'unknown'}`",
    ]
    for key in ("name", "counts", "image_size"):  # sources and methods: metrics/dataset_card.json
        if dataset_card and key in dataset_card:
            lines.append(f"- dataset {key}: `{dataset_card[key]}`")
    for key in ("train.epochs", "train.batch_size", "train.lr", "train.gan"):
        if key in train_run.get("params", {}):
            lines.append(f"- {key}: `{train_run['params'][key]}`")
    lines += [
        "",
        "## Test metrics by group",
        "",
        "MSE / PSNR (peak 255, capped at 100 dB) / fMSE / fPSNR on uint8 after rounding, per image then "
        "averaged.",
        "",
        "| method | group | n | MSE | PSNR | fMSE | fPSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in (("composite (no harmonization)", "composite"), (name, "harmonized")):
        summ = evaluation[key]
        groups = {"overall": summ["overall"], **summ["by_subset"]}
        groups.update({f"fg {k} %": v for k, v in summ["by_fg_ratio"].items()})
        groups.update({f"composite fMSE {k}": v for k, v in summ.get("by_composite_error", {}).items()})
        for group, g in groups.items():
            vals = " | ".join("-" if g[m] is None else f"{g[m]:.2f}" for m in metrics.METRICS)
            lines.append(f"| {label} | {group} | {g['n']} | {vals} |")
    lines += [
        "",
        "## Limits",
        "",
        f"- The network sees {size}x{size} images. Its `{head}` head's result reaches the native "
        "resolution " + (
            "as a per-image colour mapping fitted at that size, so the change is a global colour "
            "transform of the foreground"
            if head == "image"
            else "as a colour transform upsampled from that size, so the change is a smooth colour "
            "transform of the foreground"
        ) + " (`components.inference.predictor`): detail finer than the network's pixels is not relit.",
        "- Trained on synthesized composites (colour transfer / retouch of a real photo's object); real "
        "cut-and-paste composites differ in edges, scale and lighting, and are not measured here.",
        "- Metrics are on the test set above only; numbers on other data (e.g. iHarmony4 at 256x256) are "
        "not comparable unless evaluated the same way.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# What the register stage does, as intents (no MlflowClient outside this package)
# --------------------------------------------------------------------------------------------------


def training_run(run_id: str) -> dict:
    """``{"run_name", "params"}`` of the training run ``run_id``; ``UserError`` when this store lacks it."""
    import mlflow

    try:
        run = MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MlflowException for a run that is not in this store
        raise UserError(
            f"training run {run_id} not found in MLflow store {mlflow.get_tracking_uri()}: {exc}"
        ) from None
    return {"run_name": run.info.run_name, "params": run.data.params}


def register_evaluated(name: str, run_id: str, evaluation: dict) -> tuple[ModelVersion, bool]:
    """(version, created): the training run's model registered once under ``name``, tagged with the
    evaluation it was scored by."""
    client = MlflowClient()
    version, created = register_run_model(client, name, run_id)
    for k, v in version_tags(evaluation).items():
        client.set_model_version_tag(name, version.version, k, v)
    return version, created


def champion(name: str) -> ModelVersion | None:
    return alias_version(MlflowClient(), name, CHAMPION)


def record_promotion(name: str, version: str, run_id: str, decision: Decision, created: bool) -> list[str]:
    """Move the aliases as ``decision`` says (a new version is ``challenger``; a promoted one ``champion``),
    record the decision on the version and its training run; returns the version's aliases."""
    client = MlflowClient()
    if created:
        client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision.aliases = sorted(client.get_model_version(name, version).aliases)
    record_decision(client, name, version, run_id, decision)
    return decision.aliases


def describe_version(name: str, version: str, card: str) -> None:
    """The model card as the version's description."""
    set_description(MlflowClient(), name, version, card)


def attach_card(eval_run_id: str | None, card: str, run_id: str, showcase: str | None, version: str) -> None:
    """The model card on the evaluation run, and the showcase picture beside the version's model."""
    client = MlflowClient()
    if eval_run_id:
        client.log_text(eval_run_id, card, "model_card.md")
    if showcase:
        client.log_artifact(run_id, showcase, f"showcase/v{version}")
