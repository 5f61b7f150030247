"""The ``evaluate`` stage's work: score a generator on a test set, record it as an MLflow run (and on
the model's training run), write the per-image CSV, the summary JSON / Markdown, the showcase and the
headline metrics. ``pipeline/evaluate.py`` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from components import headline, tracking
from components.data.images import InputError
from components.errors import UserError
from components.evaluation import metrics
from components.evaluation import scoring as evaluation
from components.inference.predictor import Predictor
from components.storage import Store

log = logging.getLogger("evaluate")


def model_run_id(uri: str, info: dict, store: Store | None = None) -> str | None:
    """The training run behind a model, from the tracking store only: the run a ``runs:/`` or
    ``models:/`` URI resolves to (its file was checked against that run's record when it loaded). A
    file's own ``meta.run_id`` is only a claim: it is taken when that run recorded this very file's
    sha256, else the evaluation is not carried to any training run."""
    from components.checkpoint import CheckpointError, is_mlflow_uri, sha256_hex
    from components.tracking.model_files import model_record

    if is_mlflow_uri(uri):
        try:
            return model_record(uri).run_id
        except CheckpointError as exc:
            log.warning("%s: no training run found for it: %s", uri, exc)
            return None
    claimed = (info.get("meta") or {}).get("run_id")
    if not claimed:
        return None
    try:
        recorded = model_record(f"runs:/{claimed}/model").sha256
        actual = sha256_hex((store or Store()).read_bytes(uri))
    except (CheckpointError, OSError) as exc:
        log.warning("%s names training run %s, which cannot be checked (%s); not linking to it", uri, claimed, exc)
        return None
    if recorded != actual:
        log.warning(
            "%s names training run %s, but that run logged another generator file; not linking to it", uri, claimed
        )
        return None
    return claimed


def model_label(spec: dict) -> str:
    """``rainnet-rain-decoder`` / ``dih`` / ``rainnet-rain-decoder-pct``: the model part of a run name."""
    head = spec.get("head") if spec.get("head") not in (None, "image") else None
    return "-".join(str(p) for p in (spec.get("name", "model"), spec.get("placement"), head) if p)


def dataset_card_hash(params) -> str | None:
    try:
        return json.loads(Path(params.prepare.card).read_text()).get("content_hash")
    except (OSError, ValueError):
        return None


def run(params) -> dict:
    """Evaluate ``evaluate.model`` as ``params`` say (MLflow already configured); returns the summary."""
    cfg = params.evaluate
    store = Store.from_config(params.storage)  # the dataset, an s3:// test folder or model, the stage files

    from components.checkpoint import CheckpointError

    try:
        predictor = Predictor.from_uri(
            cfg.model, device=cfg.device, store=store, image_size=cfg.image_size, mapping=params.harmonize.mapping,
            batch_size=cfg.batch_size,
        )  # fmt: skip
    except CheckpointError as exc:
        raise UserError(f"{exc}{tracking.store_note(cfg.model)}") from None
    model, info, size = predictor.model, predictor.info, predictor.image_size
    mult = int(getattr(model, "image_size_multiple", 1) or 1)
    if size % mult:
        raise UserError(f"evaluate.image_size={size} must be a multiple of {mult} for this generator")

    dataset_hash = None
    try:
        if cfg.data:
            samples = evaluation.iharmony4_samples(store, cfg.data, cfg.split)
            data_name = cfg.data.rstrip("/").rsplit("/", 1)[-1]
        else:
            dataset = params.train.dataset or params.prepare.name
            samples = evaluation.shard_samples(store, dataset, cfg.split)
            data_name, dataset_hash = dataset, dataset_card_hash(params)
    except InputError as exc:
        raise UserError(str(exc)) from None
    test_set = evaluation.test_set_id(samples, extra=dataset_hash or "")
    log.info(
        "evaluating %s on %d images of %s at native resolution (network %dx%d, head %s) on %s",
        cfg.model, len(samples), data_name, size, size, predictor.head, predictor.device,
    )  # fmt: skip

    try:
        rows = evaluation.evaluate(predictor, samples)
    except InputError as exc:
        raise UserError(str(exc)) from None
    tables = evaluation.summaries(rows)
    methods = evaluation.by_method(rows)

    spec = dict(info["spec"])
    meta = dict(info.get("meta") or {})
    train_run = model_run_id(cfg.model, info, store)
    name = cfg.run_name or "eval-" + tracking.run_name(spec, data_name)
    flat = metrics.flatten_summary(tables["harmonized"], "test")
    flat.update(metrics.flatten_summary(tables["composite"], "composite", groups=False))
    for key, prefix in (("harmonized", "paper"), ("composite", "paper_composite")):  # apart: paper_* names
        by_subset = {k: tables["paper"][key][k] for k in ("overall", "by_subset")}
        flat.update(metrics.flatten_summary(by_subset, prefix))
    tags = tracking.standard_tags(
        params, meta.get("dataset_hash") or dataset_hash,
        model_uri=cfg.model, model_run_id=train_run or "unknown", test_set=test_set, eval_data=cfg.data or f"shards:{data_name}",
    )  # fmt: skip
    tags.update(model=str(spec.get("name")), placement=str(spec.get("placement") or "none"))
    csv_bytes = evaluation.per_image_csv(rows)
    md = f"## Evaluation of `{cfg.model}` on {data_name} ({len(rows)} images, network {size}x{size})\n\n"
    md += evaluation.summary_markdown(tables, model_label(spec), methods, size)
    showcase = evaluation.showcase(predictor, samples, cfg.showcase_count, model_label(spec))
    eval_run = tracking.record_evaluation(
        cfg.experiment, name, tags, {"evaluate": _asdict(cfg), "image_size": size, "n_images": len(rows)},
        flat, {"eval_per_image.csv": csv_bytes.decode(), "eval_summary.md": md},
        {"eval_showcase.png": showcase},
    )  # fmt: skip

    summary = {
        "n_images": len(rows),
        "image_size": size,
        "test_set": test_set,
        "data": cfg.data or f"shards:{data_name}",
        "model_uri": cfg.model,
        "model_run_id": train_run,
        "eval_run_id": eval_run,
        "dataset_hash": meta.get("dataset_hash") or dataset_hash,
        "generator": spec,
        "resolution": "native",
        "composite": tables["composite"],
        "harmonized": tables["harmonized"],
        "by_method": methods,
        "paper": tables["paper"],
    }
    tracking.carry_test_results(train_run, summary)  # onto the training run too: compare pages show it
    for path, data in (
        (cfg.per_image_out, csv_bytes),
        (cfg.summary_out, (json.dumps(summary, indent=2, sort_keys=False) + "\n").encode()),
        (cfg.summary_md, md.encode()),
        (cfg.showcase_out, showcase),
    ):
        store.write_bytes(path, data)
    headline.write(headline.path_for(cfg.summary_out), headline.evaluate(summary), store)
    return summary


def _asdict(cfg) -> dict:
    return dataclasses.asdict(cfg)
