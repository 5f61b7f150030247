"""MLflow, behind one package: where to track, experiments, tags, run names (this module), the Model
Registry (``registry``) and the training run's logging (``training_log``).

Where runs go: ``MLFLOW_TRACKING_URI`` when set (a shared server on a cluster), else
``sqlite:///<project root>/mlruns.db`` with artifacts in ``<project root>/mlartifacts/``. The project
root is the nearest directory at or above the working directory that holds ``params.yaml`` (where
``dvc repro`` runs every stage), or the working directory when there is none. The default is an
absolute path, so it means the same file from any subfolder.

Ray workers must not guess: a worker may run in a copy of the repo (``runtime_env`` working_dir) or
on another machine. ``configure()`` exports the resolved URI to ``os.environ`` (so a local Ray started
afterwards inherits it), and ``worker_env()`` gives the variables to pass in
``runtime_env={"env_vars": ...}`` for a cluster started elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment, Param, Run
from mlflow.exceptions import MlflowException

from components.config import flatten
from components.workspace import main_workspace

log = logging.getLogger(__name__)

ENV_VAR = "MLFLOW_TRACKING_URI"
REGISTRY_ENV_VAR = "MLFLOW_REGISTRY_URI"  # never exported: the registry is the tracking store
DB_NAME = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
# Param values longer than this are truncated: 500 is the limit of older MLflow servers (3.x allows
# 6000), so what we log is accepted by any server and re-logging it is byte-for-byte the same.
PARAM_VALUE_LIMIT = 500
_TRUNCATED = "...[truncated]"
_BATCH = 100  # MLflow's most params per log_batch
_configured: str | None = None  # the URI of the last configure() in this process


# --------------------------------------------------------------------------------------------------
# Where to track
# --------------------------------------------------------------------------------------------------


def project_root(start: str | Path | None = None) -> Path:
    """Nearest directory at or above ``start`` (default: cwd) holding ``params.yaml``; else ``start``.

    Inside a DVC temporary workspace (``dvc exp run --temp`` / ``--queue``) it is the project itself."""
    here = Path(start or os.getcwd()).resolve()
    main = main_workspace(here)  # a DVC experiment's temporary workspace tracks into its project
    if main is not None and (main / "params.yaml").is_file():
        return main
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return d
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project root>/mlruns.db``; sqlite paths made absolute."""
    from components.credentials import split_tracking_credentials

    split_tracking_credentials()  # user:password@ into MLflow's basic-auth variables, out of every URL
    env = os.environ.get(ENV_VAR, "").strip()
    if not env:
        return f"sqlite:///{project_root() / DB_NAME}"
    db = _sqlite_path(env)
    return f"sqlite:///{db}" if db is not None else env


def configure(uri: str | None = None, export_env: bool = True) -> str:
    """Point MLflow tracking and the model registry at ``uri`` (default ``tracking_uri()``); return it.

    With ``export_env`` the URI is also put in ``os.environ`` as ``MLFLOW_TRACKING_URI`` so child
    processes (a local Ray, DVC subprocesses) track to the same place; nothing else in ``os.environ``
    changes (not ``MLFLOW_REGISTRY_URI``, which MLflow's own setters would export).
    """
    global _configured
    from components.credentials import strip_credentials

    uri = strip_credentials(uri or tracking_uri())  # printed by MLflow ("View run at"), sent to workers
    db = _sqlite_path(uri)
    if db is not None:  # absolute, so workers and subfolders open the same file
        uri = f"sqlite:///{db}"
        db.parent.mkdir(parents=True, exist_ok=True)
    before = {k: os.environ.get(k) for k in (ENV_VAR, REGISTRY_ENV_VAR)}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow's setters also put both URIs in os.environ. Only the documented export stays: an exported
    # registry URI would pin every later client and child process (given another tracking URI) to this
    # store, and a reader's URI would become the default of the next configure().
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if export_env:
        os.environ[ENV_VAR] = uri
    _configured = uri
    return uri


def in_project(start: str | Path | None = None) -> bool:
    """Whether ``start`` (default: cwd) is inside a project (a ``params.yaml`` at or above it)."""
    return (project_root(start) / "params.yaml").is_file()


def configure_reader(uri: str | None = None) -> str:
    """Point MLflow at an existing store to read models and runs from, creating nothing; return its URI.

    ``uri``, else ``MLFLOW_TRACKING_URI``, else the project's ``mlruns.db``. Outside a project with
    neither given, or when the sqlite file does not exist, ``LookupError`` says which store was looked
    for (a reader run from another folder must not leave an empty ``./mlruns.db`` behind)."""
    uri = uri or os.environ.get(ENV_VAR, "").strip() or None
    if uri is None and not in_project():
        raise LookupError(
            f"no MLflow store: {ENV_VAR} is unset and {Path.cwd()} is not in a project (no params.yaml "
            "here or above); give --tracking-uri URI"
        )
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise LookupError(f"MLflow store {uri} does not exist (give --tracking-uri URI)")
    return configure(uri, export_env=False)


def store_note(model_uri: str) -> str:
    """`` (MLflow store <uri>)`` for a ``runs:/`` or ``models:/`` URI, so a not-found message says where
    it looked; empty for files."""
    return f" (MLflow store {mlflow.get_tracking_uri()})" if model_uri.startswith(("runs:/", "models:/")) else ""


def worker_env() -> dict[str, str]:
    """Environment for Ray workers (``runtime_env={"env_vars": worker_env()}``): the resolved URI."""
    return {ENV_VAR: _configured or tracking_uri()}


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute or relative to cwd); None for other stores."""
    if not uri.startswith("sqlite:"):
        return None
    path = urlparse(uri).path
    # sqlite:////abs/db -> "//abs/db"; sqlite:///rel.db -> "/rel.db" (relative, SQLAlchemy style)
    path = path[1:] if path.startswith("/") else path
    return Path(path).resolve() if path and path != ":memory:" else None


def default_artifact_location(experiment: str, uri: str | None = None) -> str | None:
    """``file://`` URI of ``mlartifacts/<experiment>`` next to a sqlite database; None for servers.

    MLflow's own default for a sqlite store is ``./mlruns`` relative to whatever cwd the first run had;
    pinning it next to the database keeps artifacts with their runs. Servers decide for themselves.
    """
    db = _sqlite_path(uri or mlflow.get_tracking_uri())
    if db is None:
        return None
    safe = re.sub(r"[^\w.\-]+", "_", experiment).strip(".") or "_"
    return (db.parent / ARTIFACTS_DIR / safe).as_uri()


NOTE_TAG = "mlflow.note.content"  # the experiment's description in the MLflow UI
# What each experiment holds, shown at the top of its page; other experiment names get a generic note.
EXPERIMENT_NOTES = {
    "harmonization-train": (
        "Training runs of harmonization generators (RainNet, DIH), one per train key. Per epoch: "
        "val_* metrics (step = epoch) and the sample grid (image key `samples`); per step: `train/*` "
        "losses (step = global step). After `evaluate`, the test metrics (`test_*`) of the model and of "
        "the unharmonized composite; after `register`, the registered version and the decision as tags."
    ),
    "harmonization-eval": (
        "Evaluation runs: one model scored on one test set at native resolution. Tag `model_run_id` "
        "links to the training run, which receives the same `test_*` metrics."
    ),
    "harmonization-ablation": (
        "Ablation sweeps (RAIN placements x heads): one parent run per sweep with the table and "
        "figures, one child training run per variant."
    ),
    "harmonization-import": (
        "Imported published checkpoints (python -m pipeline.import_model): one run per file and size, "
        "params source_format, file_sha256, ngf, depth, image_size; the generator logged as the model "
        "and registered (tag source=authors). After `evaluate`, the same `test_*` metrics as a training run."
    ),
}


def experiment_note(name: str) -> str:
    return EXPERIMENT_NOTES.get(name, f"Harmonization pipeline runs ({name}).")


def get_or_create_experiment(name: str, client: MlflowClient | None = None) -> Experiment:
    """The experiment called ``name``, created with its description if missing (safe when two processes
    race to create it); an existing experiment without a description gets one."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            location = default_artifact_location(name, client.tracking_uri)
            client.create_experiment(name, artifact_location=location, tags={NOTE_TAG: experiment_note(name)})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
        exp = client.get_experiment(exp.experiment_id)
    if NOTE_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, NOTE_TAG, experiment_note(name))
        exp = client.get_experiment(exp.experiment_id)
    return exp


# --------------------------------------------------------------------------------------------------
# Tags and names
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GitInfo:
    commit: str  # full sha, or "unknown" outside a git checkout
    short: str  # 8-character sha, or "unknown"
    dirty: bool | None  # tracked files other than pipeline outputs modified; None when unknown


def pipeline_outputs(root: Path) -> list[str]:
    """``dvc.lock`` and the outs / metrics / plots of ``dvc.yaml``: files the pipeline itself rewrites
    (committed so a clone has them), which a run does not make the code "dirty" by changing."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return []
    paths = ["dvc.lock"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                if "${" not in path:
                    paths.append(path)
    return paths


def git_commit(path: str | Path | None = None) -> GitInfo:
    """The commit of the checkout holding ``path`` (default: project root) and whether its code is dirty
    (tracked files modified, the pipeline's own outputs aside: a run rewrites those as it goes)."""
    where = str(path or project_root())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        top = Path(git("rev-parse", "--show-toplevel"))
        exclude = [f":(top,exclude){Path(where).resolve().relative_to(top) / p}" for p in pipeline_outputs(Path(where))]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *exclude))
    except (OSError, subprocess.SubprocessError):
        return GitInfo("unknown", "unknown", None)
    return GitInfo(sha, sha[:8], dirty)


def _generator_spec(params: Any) -> dict[str, Any]:
    if isinstance(params, Mapping):
        model = params.get("model", {})
        return dict(model.get("generator", {}) if isinstance(model, Mapping) else {})
    return dict(params.model.generator)


def standard_tags(params: Any, dataset_hash: str | None, **extra: Any) -> dict[str, str]:
    """Tags every run carries (docs/CONTRACTS.md): git_commit, git_dirty, dataset_hash, model, placement.

    ``params`` is a ``components.config.Params`` or its ``to_dict()``; ``extra`` adds more tags
    (values turned into strings). ``placement`` is ``none`` for a generator without one (DIH).
    """
    spec = _generator_spec(params)
    git = git_commit()
    tags = {
        "git_commit": git.commit,
        "git_dirty": "unknown" if git.dirty is None else str(git.dirty).lower(),
        "dataset_hash": dataset_hash or "unknown",
        "model": str(spec.get("name", "unknown")),
        "placement": str(spec.get("placement") or "none"),
    }
    if git.commit != "unknown":
        tags["mlflow.source.git.commit"] = git.commit
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def run_name(generator_spec: Mapping[str, Any], dataset_name: str) -> str:
    """``rainnet-rain-decoder-default``, ``dih-pct-default``: model [placement] [head] data."""
    parts = [str(generator_spec.get("name", "model"))]
    if generator_spec.get("placement"):
        parts.append(str(generator_spec["placement"]))
    if generator_spec.get("head") not in (None, "image"):
        parts.append(str(generator_spec["head"]))
    parts.append(str(dataset_name))
    return "-".join(parts)


# --------------------------------------------------------------------------------------------------
# Runs and params
# --------------------------------------------------------------------------------------------------


def equals_filter(field: str, value: str) -> str:
    """An MLflow search filter ``field = 'value'`` with the value quoted safely."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{field} = '{quoted}'"


def find_latest_run(
    experiment: str | Experiment, filter_string: str, client: MlflowClient | None = None
) -> Run | None:
    """The most recent run of ``experiment`` (name or object) matching ``filter_string``; None if none."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(experiment) if isinstance(experiment, str) else experiment
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=filter_string,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def find_run_by_name(
    experiment: str | Experiment, name: str, client: MlflowClient | None = None
) -> Run | None:
    """The most recent live run called ``name`` in ``experiment`` (name or object); None if there is none."""
    return find_latest_run(experiment, equals_filter("attributes.run_name", name), client)


def start_or_resume_run(
    experiment: str, name: str, tags: Mapping[str, str] | None = None, resume: bool = True
) -> mlflow.ActiveRun:
    """``mlflow.start_run`` that reopens the run called ``name`` (when ``resume``) instead of duplicating it.

    Use as a context manager. ``tags`` are set either way (a resumed run gets the current commit).
    """
    exp = get_or_create_experiment(experiment)
    existing = find_run_by_name(exp, name) if resume else None
    if existing is not None:
        log.info("resuming MLflow run %s (%s)", name, existing.info.run_id)
        active = mlflow.start_run(run_id=existing.info.run_id)
        if tags:
            mlflow.set_tags(dict(tags))
        return active
    return mlflow.start_run(experiment_id=exp.experiment_id, run_name=name, tags=dict(tags or {}))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > PARAM_VALUE_LIMIT:
        text = text[: PARAM_VALUE_LIMIT - len(_TRUNCATED)] + _TRUNCATED
    return text


def log_params_flat(
    params: Any,
    run_id: str | None = None,
    on_conflict: str = "error",
    client: MlflowClient | None = None,
) -> dict[str, str]:
    """Log nested params (``Params``, a nested or flat dict) as ``section.key`` MLflow params.

    Values are JSON-ish strings (``true``, ``null``, ``[...]``) cut to ``PARAM_VALUE_LIMIT``. Logging
    the same values again is a no-op (resumed runs); a key already logged with another value is an
    error naming it (``on_conflict="error"``) or keeps the old value with a warning (``"keep"``).
    Returns the params newly logged. ``run_id`` defaults to the active run.
    """
    if on_conflict not in ("error", "keep"):
        raise ValueError(f"on_conflict must be 'error' or 'keep', got {on_conflict!r}")
    client = client or MlflowClient()
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("log_params_flat: no run_id and no active MLflow run")
        run_id = active.info.run_id
    data = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    flat = {k: _param_value(v) for k, v in flatten(data).items()}
    existing = client.get_run(run_id).data.params
    conflicts = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
    if conflicts:
        detail = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in sorted(conflicts.items()))
        if on_conflict == "error":
            raise ValueError(f"MLflow run {run_id} already has different params (immutable): {detail}")
        log.warning("keeping the params already logged on run %s: %s", run_id, detail)
    new = {k: v for k, v in flat.items() if k not in existing}
    items = [Param(k, v) for k, v in sorted(new.items())]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])
    return new


# Sections of params.yaml that shape a training run; evaluate / register / harmonize / ablate settings
# act after it and would only crowd the run's params (and make two identical trainings look different).
RUN_PARAM_SECTIONS = ("prepare", "model", "train")


def run_params(params: Any, sections: tuple[str, ...] = RUN_PARAM_SECTIONS) -> dict[str, Any]:
    """The nested params of ``sections`` only (``params`` a ``Params`` or its dict)."""
    data = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    return {k: v for k, v in data.items() if k in sections}


# --------------------------------------------------------------------------------------------------
# Dataset inputs and results carried back to the training run
# --------------------------------------------------------------------------------------------------


def dataset_entity(name: str, digest: str, source: str, profile: Mapping[str, Any] | None = None):
    """An MLflow dataset (``MetaDataset``) named ``name`` with the card's content hash as its digest and
    the manifest (or shard folder) URI as its source: the run's Inputs column, comparable across runs."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if "://" not in source:
        source = str(Path(source).resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(source)
    from mlflow.entities import Dataset

    entity = MetaDataset(src, name=name, digest=digest[:36])._to_mlflow_entity()
    if not profile:
        return entity
    return Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema,
                   json.dumps(dict(profile), sort_keys=True))  # fmt: skip


def log_dataset_input(
    run_id: str, name: str, digest: str, source: str, context: str = "training",
    profile: Mapping[str, Any] | None = None, client: MlflowClient | None = None,
) -> None:  # fmt: skip
    """Log the dataset as an input of ``run_id`` (tag ``mlflow.data.context`` = ``context``)."""
    from mlflow.entities import DatasetInput, InputTag

    client = client or MlflowClient()
    entity = dataset_entity(name, digest, source, profile)
    inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
    try:
        client.log_inputs(run_id, inputs)
    except MlflowException as e:
        # Two runs logging the same new dataset at once (Ray Tune trials, two trainings) race to insert
        # its row, unique per (experiment, name, digest): the loser's transaction rolls back with an
        # integrity error. The row exists now, so a second try only links it to this run.
        if not is_unique_violation(e):
            raise
        log.info("dataset %s was being logged by another run at the same time; linking it", name)
        client.log_inputs(run_id, inputs)


def is_unique_violation(error: Exception) -> bool:
    """A tracking store's integrity error on a unique key (SQLite, PostgreSQL, MySQL wording)."""
    text = str(error).lower()
    return "unique constraint" in text or "duplicate entry" in text or "duplicate key" in text


# Overall test metrics copied onto the training run: the model's and the composite's (the baseline).
RESULT_METRICS = ("mse", "psnr", "fmse", "fpsnr")


def log_test_results(run_id: str, summary: Mapping[str, Any], client: MlflowClient | None = None) -> dict:
    """Put an evaluation's overall test metrics on the training run ``run_id`` (``test_fmse``,
    ``test_composite_fmse``, ...; tags ``test_set`` and ``eval_run_id``), so the run compare page and
    the model-version compare page show the numbers that decide promotion. Returns the metrics."""
    import time

    from mlflow.entities import Metric, RunTag

    client = client or MlflowClient()
    values = {}
    for prefix, key in (("test", "harmonized"), ("test_composite", "composite")):
        overall = summary[key]["overall"]
        values.update({f"{prefix}_{m}": float(overall[m]) for m in RESULT_METRICS if overall.get(m) is not None})
    now = int(time.time() * 1000)
    tags = {"test_set": summary.get("test_set"), "eval_run_id": summary.get("eval_run_id"),
            "test_data": summary.get("data")}  # fmt: skip
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in values.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None],
    )
    return values


def tag_run(run_id: str, tags: Mapping[str, Any], client: MlflowClient | None = None) -> None:
    """Set several tags on a run in one call (values turned into strings)."""
    from mlflow.entities import RunTag

    client = client or MlflowClient()
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def carry_test_results(run_id: str | None, summary: Mapping[str, Any]) -> None:
    """``log_test_results`` when the model has a training run in this store; a warning otherwise
    (a generator file trained elsewhere still gets its evaluation run)."""
    if not run_id:
        return
    try:
        log_test_results(run_id, summary)
    except MlflowException as exc:
        log.warning("test metrics not copied to training run %s (%s): %s", run_id, mlflow.get_tracking_uri(), exc)


def record_evaluation(
    experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any],
    metrics: Mapping[str, float], texts: Mapping[str, str], images: Mapping[str, bytes],
) -> str:  # fmt: skip
    """One evaluation as a run of ``experiment``: its params, metrics, text files and PNG pictures;
    returns the run id."""
    import io

    from PIL import Image

    exp = get_or_create_experiment(experiment)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name, tags=dict(tags)) as run:
        log_params_flat(params)
        mlflow.log_metrics(dict(metrics))
        for name, text in texts.items():
            mlflow.log_text(text, name)
        for name, png in images.items():
            mlflow.log_image(Image.open(io.BytesIO(png)), name)
        return run.info.run_id


def log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Metrics (not params) on an existing run: a rerun may log them again."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
