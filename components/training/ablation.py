"""RAIN placement ablations (Table 1 of the supplementary) and DIH vs DIH + RAIN, as one Ray Tune sweep.

Plan. The variants are the placements of ``ablate.placements`` (all of Table 1 with the no-RAIN
baseline and all-RAIN by default) for RainNet, plus one variant per other family (``dih``,
``dih_rain``), each with every head of ``ablate.heads``. Below 256 px some of the 14 slots have no layer
(``rainnet.slot_map``), so two placements can build the same network: the plan keeps one variant per
distinct network (family, head, the placement letters of the slots that exist at this size) and records
which names it stands for.

Run. Each distinct variant is one Tune trial: a function that calls ``launch.train`` (a TorchTrainer
with ``TuneReportCallback``, so Tune sees every epoch; ASHA can stop trials early when
``ablate.asha``). Same data, epochs and seed for all. MLflow: one parent run per sweep in
``ablate.experiment``; each trial's training run is a nested child run of it (tag
``mlflow.parentRunId``) with the placement name and string, family and head as params and the
per-epoch validation metrics (step = epoch).

Robustness. A failing trial is recorded as failed (table, MLflow) and the others go on. Rerunning the
same sweep skips the variants whose child run already finished its epochs and resumes the others from
their Ray Train checkpoints (``<storage.root>/ray/<train key>/``), so an interrupted sweep continues.

Fault injection for tests and drills: ``HARMONIZE_ABLATE_FAIL=<variant>[,<variant>...]`` makes those
variants' workers fail after their first epoch with no retry (a rerun without it resumes them).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from components import tracking
from components.config import Params
from components.errors import UserError
from components.models.rainnet import PLACEMENTS, num_blocks_for, resolve_placement, slot_map
from components.models.registry import allowed_arguments, build_model
from components.storage import Store
from components.tracking.training_log import training_dataset
from components.training import launch
from components.training.loop import FAULT_ENV

log = logging.getLogger(__name__)

FAIL_ENV = "HARMONIZE_ABLATE_FAIL"
FAMILIES = ("rainnet", "dih", "dih_rain")
HEADS = ("image", "affine", "pct")
SWEEP_TAG = "ablation_sweep"  # on the parent: the sweep key
CHILD_TAG = "ablation_sweep_child"  # on each trial run: the sweep key
VARIANT_TAG = "ablation_variant"
# The paper's grouping of Table 1 (RAINNET.md): type I decoder / encoder, II symmetric, III inner.
PLACEMENT_TYPES = {
    "baseline": "-",
    "rain-decoder-1": "I",
    "rain-decoder-2": "I",
    "rain-decoder-3": "I",
    "rain-decoder-4": "I",
    "rain-decoder": "I",
    "rain-encoder": "I",
    "rain-1": "II",
    "rain-2": "II",
    "rain-3": "II",
    "rain-4": "II",
    "rain-5": "II",
    "rain-6": "II",
    "rain-inner-3": "III",
    "rain-inner-4": "III",
    "rain-inner-5": "III",
    "all-rain": "-",
}
REFERENCES = ("baseline", "all-rain")  # drawn in every type figure
METRICS = ("val_psnr", "val_mse", "val_fmse")
CSV_COLUMNS = (
    "variant", "family", "placement", "placement_string", "effective_placement", "head", "type",
    "stands_for", "status", "epochs", "final_psnr", "final_mse", "final_fmse", "best_psnr",
    "best_psnr_epoch", "best_mse", "best_fmse", "run_id", "error",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Plan: the distinct networks of a sweep
# --------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One network of the sweep. ``effective`` has the placement letter of every slot that has a layer
    at this image size and ``.`` for the others (``None`` for DIH families)."""

    id: str
    family: str
    head: str
    placement: str | None = None  # Table 1 name (lower case) or the I/R string as given
    placement_string: str | None = None
    effective: str | None = None
    type: str = "-"
    stands_for: list[str] = field(default_factory=list)

    def spec(self, base: dict) -> dict:
        """The generator spec: ``base`` (``model.generator``) with this family, placement and head, keys
        the family does not take dropped, ``image_size`` left to the data."""
        allowed = set(allowed_arguments(self.family))
        spec = {k: v for k, v in base.items() if k in allowed and k != "image_size"}
        spec["name"] = self.family
        if self.placement is not None:
            spec["placement"] = self.placement
        spec["head"] = self.head
        return spec


def effective_placement(placement: str, image_size: int) -> str:
    """The placement as built at ``image_size``: its letter where the slot has a layer, ``.`` elsewhere
    (the slots of ``RainNet.slot_layers()`` that are non-empty)."""
    string = resolve_placement(placement)
    present: set[int] = set()
    for enc, dec in slot_map(num_blocks_for(image_size)).values():
        present.add(dec)
        if enc is not None:
            present.add(enc)
    return "".join(c if i + 1 in present else "." for i, c in enumerate(string))


def placement_type(placement: str) -> str:
    key = placement.strip().lower().replace("_", "-")
    return PLACEMENT_TYPES.get(key, "custom")


def _placement_key(placement: str) -> str:
    key = placement.strip().lower().replace("_", "-")
    return key if key in PLACEMENTS else placement.strip().upper()


def plan(params: Params, image_size: int) -> list[Variant]:
    """The distinct variants of the sweep, in Table 1 order (``ablate.placements`` order when given)."""
    a = params.ablate
    base = dict(params.model.generator)
    heads = a.heads or [base.get("head", "image")]
    placements = a.placements if a.placements is not None else list(PLACEMENTS)
    for fam in a.families:
        if fam not in FAMILIES:
            raise UserError(
                f"ablate.families: unknown family {fam!r}; expected some of {', '.join(FAMILIES)}"
            )
    for head in heads:
        if head not in HEADS:
            raise UserError(f"ablate.heads: unknown head {head!r}; expected some of {', '.join(HEADS)}")
    if "rainnet" in a.families and not placements:
        raise UserError("ablate.placements is empty: name at least one placement (or null for all)")
    several_heads = len(heads) > 1
    variants: list[Variant] = []
    by_network: dict[tuple, Variant] = {}
    for fam in a.families:
        for head in heads:
            names = [_placement_key(p) for p in placements] if fam == "rainnet" else [None]
            for name in names:
                parts = [fam] + ([name] if name else []) + ([head] if several_heads else [])
                vid = "-".join(parts)
                if name is None:
                    v = Variant(vid, fam, head, type="DIH")
                else:
                    try:
                        string = resolve_placement(name)
                        eff = effective_placement(name, image_size)
                    except ValueError as exc:
                        raise UserError(f"ablate.placements: {exc}") from None
                    v = Variant(vid, fam, head, name, string, eff, placement_type(name))
                key = (fam, head, v.effective)
                if key in by_network:
                    if vid not in by_network[key].stands_for:
                        by_network[key].stands_for.append(vid)
                    continue
                v.stands_for = [vid]
                by_network[key] = v
                variants.append(v)
    for v in variants:  # every family / head / placement must build (cheaply: ngf 1)
        try:
            build_model({**v.spec(base), "ngf": 1, "image_size": image_size})
        except (ValueError, TypeError) as exc:
            raise UserError(f"variant {v.id}: {exc}") from None
    return variants


def trial_params(params: Params, variant: Variant) -> Params:
    """The ``Params`` one trial trains with: the train section with the ablate overrides, the variant's
    generator, the ablation experiment, the variant as run name."""
    p = copy.deepcopy(params)
    a, t = p.ablate, p.train
    if a.epochs is not None:
        t.epochs = a.epochs
    if a.decay_epochs is not None:
        t.decay_epochs = a.decay_epochs
    for name in ("num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"):
        if getattr(a, name) is not None:
            setattr(t, name, getattr(a, name))
    t.experiment = a.experiment
    t.run_name = variant.id
    p.model.generator = variant.spec(dict(params.model.generator))
    return p


def sweep_name(params: Params) -> str:
    return params.ablate.name or f"ablation-{launch.dataset_name(params)}"


def sweep_key(params: Params, variants: list[Variant], data_hash: str) -> str:
    """Sweep name + a fingerprint of what shapes its trainings (not the epochs: raising them continues)."""
    base = trial_params(params, variants[0])
    what = {
        "train": launch.fingerprint(base, {}, data_hash),
        "variants": [dataclasses.asdict(v) for v in variants],
    }
    fp = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{sweep_name(params)}-{fp[:8]}"


# --------------------------------------------------------------------------------------------------
# One trial (runs in a Tune trial actor)
# --------------------------------------------------------------------------------------------------


def run_trial(config: dict, sweep: dict) -> None:
    """Tune function: train one variant with ``launch.train``, each epoch reported to Tune."""
    from mlflow import MlflowClient
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ.update(sweep["env"])
    tracking.configure(sweep["tracking_uri"])
    v = Variant(**sweep["variants"][config["variant"]])
    params: Params = sweep["params"][v.id]
    worker_env = {}
    if v.id in sweep["fail"]:
        worker_env[FAULT_ENV] = "1"
        params.train.max_failures = 0
    res = launch.train(
        params,
        key_prefix=f"{sweep['key']}.{v.id}",
        tags={
            **sweep["git_tags"],  # the trial's working directory may not be the checkout
            "mlflow.parentRunId": sweep["parent_run_id"],
            CHILD_TAG: sweep["key"],
            VARIANT_TAG: v.id,
            "ablation_type": v.type,
            "family": v.family,
            "head": v.head,
        },
        extra_params={
            "ablation.variant": v.id,
            "ablation.family": v.family,
            "ablation.head": v.head,
            "ablation.placement": v.placement or "none",
            "ablation.placement_string": v.placement_string or "none",
            "ablation.effective_placement": v.effective or "none",
            "ablation.type": v.type,
            "ablation.stands_for": ",".join(v.stands_for),
        },
        callbacks=[TuneReportCallback()],
        worker_env=worker_env,
    )
    MlflowClient().set_terminated(res.run_id, status="FINISHED")


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------


def find_or_create_parent(params: Params, key: str, variants: list[Variant], data_hash: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = tracking.get_or_create_experiment(params.ablate.experiment, client)
    run = tracking.find_latest_run(exp, tracking.equals_filter(f"tags.{SWEEP_TAG}", key), client)
    tags = tracking.standard_tags(params, data_hash, dataset=launch.dataset_name(params))
    tags.update({SWEEP_TAG: key, "placement": "sweep", "variants": str(len(variants))})
    if run is None:
        run_id = client.create_run(exp.experiment_id, run_name=sweep_name(params), tags=tags).info.run_id
        # The sweep's data as the parent's input, logged before any trial starts: the concurrent trials
        # then link the experiment's existing dataset instead of racing to insert it.
        dataset = training_dataset(params, launch.dataset_name(params), data_hash)
        tracking.log_dataset_input(run_id, client=client, context="training", **dataset)
    else:
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    tracking.log_params_flat(params, run_id=run_id, on_conflict="keep", client=client)
    tracking.log_params_flat(
        {"ablation.variants": ",".join(v.id for v in variants)},
        run_id=run_id,
        on_conflict="keep",
        client=client,
    )
    return run_id


def child_runs(params: Params, key: str) -> dict[str, Any]:
    """Variant id -> its latest child run in this sweep."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = tracking.get_or_create_experiment(params.ablate.experiment, client)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=tracking.equals_filter(f"tags.{CHILD_TAG}", key),
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r.data.tags.get(VARIANT_TAG, ""), r)
    return out


def curves(run_id: str) -> list[dict]:
    """Per-epoch rows ``{"epoch", "val_psnr", "val_mse", "val_fmse", "val_composite_*"}`` of a child run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    rows: dict[int, dict] = {}
    for name in (*METRICS, "val_composite_psnr", "val_composite_mse", "val_composite_fmse"):
        for m in client.get_metric_history(run_id, name):
            rows.setdefault(int(m.step), {"epoch": int(m.step)})[name] = float(m.value)
    return [rows[e] for e in sorted(rows) if all(k in rows[e] for k in METRICS)]


STOPPED_TAG = "ablation_stopped"  # on a child run that ASHA cut early: not resumed by a rerun of an ASHA sweep


def is_finished(run, epochs: int, asha: bool = False) -> bool:
    if run is None:
        return False
    if asha and run.data.tags.get(STOPPED_TAG) == "asha":
        return True  # ASHA's decision stands: rerunning the sweep does not revive it
    if run.info.status != "FINISHED":
        return False
    return max((r["epoch"] for r in curves(run.info.run_id)), default=0) >= epochs


# --------------------------------------------------------------------------------------------------
# Results: table, Markdown, figures
# --------------------------------------------------------------------------------------------------


def result_row(v: Variant, status: str, history: list[dict], run_id: str = "", error: str = "") -> dict:
    row: dict[str, Any] = {
        "variant": v.id, "family": v.family, "placement": v.placement or "", "placement_string":
        v.placement_string or "", "effective_placement": v.effective or "", "head": v.head, "type": v.type,
        "stands_for": ";".join(v.stands_for), "status": status, "epochs": len(history), "run_id": run_id,
        "error": error,
    }  # fmt: skip
    if history:
        last = history[-1]
        best = max(history, key=lambda r: r["val_psnr"])
        row.update(
            final_psnr=round(last["val_psnr"], 4),
            final_mse=round(last["val_mse"], 4),
            final_fmse=round(last["val_fmse"], 4),
            best_psnr=round(best["val_psnr"], 4),
            best_psnr_epoch=best["epoch"],
            best_mse=round(min(r["val_mse"] for r in history), 4),
            best_fmse=round(min(r["val_fmse"] for r in history), 4),
        )
    return row


def write_csv(path: str, rows: list[dict], store: Store | None = None) -> None:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    (store or Store()).write_bytes(path, buf.getvalue().encode())


def _fmt(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) and math.isfinite(x) else (str(x) if x != "" else "-")


def markdown(rows: list[dict], info: dict, composite: dict | None) -> str:
    lines = [
        f"# Ablation `{info['sweep']}`",
        "",
        f"Sweep key `{info['key']}`, MLflow parent run `{info['parent_run_id']}` (experiment "
        f"`{info['experiment']}`). Data `{info['dataset']}` ({info['image_size']}x{info['image_size']}), "
        f"{info['epochs']} epoch(s) per variant, seed {info['seed']}. Validation metrics per image on 0..255, "
        "PSNR peak 255; best PSNR is the highest epoch, best MSE / fMSE the lowest.",
        "",
        f"Scheduler: {info.get('scheduler', 'none (every variant runs all epochs)')}.",
        "",
        f"Command: `{info['command']}`",
        "",
        "| variant | type | placement | effective at this size | stands for | status | epochs | "
        "final PSNR | final MSE | final fMSE | best PSNR | epoch of best PSNR | best MSE | best fMSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if composite:
        lines.append(
            f"| composite (no harmonization) | | | | | | | {_fmt(composite['psnr'])} | "
            f"{_fmt(composite['mse'])} | {_fmt(composite['fmse'])} | | | | |"
        )
    for r in rows:
        place = f"`{r['placement_string']}`" if r["placement_string"] else "-"
        eff = f"`{r['effective_placement']}`" if r["effective_placement"] else "-"
        status = r["status"] + (f" ({r['error']})" if r.get("error") else "")
        lines.append(
            f"| {r['variant']} | {r['type']} | {place} | {eff} | {', '.join(r['stands_for'].split(';'))} | "
            f"{status} | {r['epochs']} | {_fmt(r.get('final_psnr', ''))} | {_fmt(r.get('final_mse', ''))} | "
            f"{_fmt(r.get('final_fmse', ''))} | {_fmt(r.get('best_psnr', ''))} | "
            f"{r.get('best_psnr_epoch', '-')} | {_fmt(r.get('best_mse', ''))} | {_fmt(r.get('best_fmse', ''))} |"
        )
    lines += [
        "",
        "Effective placement: the slot letters of the layers that exist at this image size (`.`: no layer; "
        "below 256 px the middle slots have none), so one network can stand for several Table 1 names.",
        "",
    ]
    return "\n".join(lines)


def figure(panels: list[tuple[str, dict[str, list[dict]], dict[str, list[dict]]]]) -> bytes:
    """PSNR against epoch (the supplementary's Fig. 2-4), one panel per ``(title, curves, references)``:
    a line per variant, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (title, curves_by_variant, references) in zip(axes[0], panels, strict=True):
        for name, hist in curves_by_variant.items():
            if hist:
                ax.plot([r["epoch"] for r in hist], [r["val_psnr"] for r in hist], marker="o", ms=3, label=name)
        for name, hist in references.items():
            if hist and name not in curves_by_variant:
                ax.plot(
                    [r["epoch"] for r in hist], [r["val_psnr"] for r in hist], ls="--", marker="x", ms=4, label=name
                )
        if not any(curves_by_variant.values()) and not any(references.values()):
            ax.text(0.5, 0.5, "no variant of this kind finished an epoch", ha="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _label(v: Variant) -> str:
    others = [n.removeprefix(f"{v.family}-") for n in v.stands_for if n != v.id]
    return v.id + (f" (= {', '.join(others)})" if others else "")


def figure_panels(variants: list[Variant], histories: dict[str, list[dict]]) -> list[tuple]:
    """The panels of the sweep's figure: one per kind the sweep has a variant of (placement types I, II,
    III with baseline and all-RAIN dashed in each; DIH vs DIH + RAIN), so a sweep of three placements
    draws one panel, not three empty ones. A sweep of the references alone draws them in one panel."""
    refs = {
        _label(v): histories.get(v.id, [])
        for v in variants
        if v.family == "rainnet" and v.placement in REFERENCES
    }
    panels = []
    for t in ("I", "II", "III"):
        chosen = {_label(v): histories.get(v.id, []) for v in variants if v.type == t}
        if chosen:
            panels.append((f"Type {t} placements: validation PSNR", chosen, refs))
    fam = {_label(v): histories.get(v.id, []) for v in variants if v.family != "rainnet"}
    if fam:
        panels.append(("DIH vs DIH + RAIN: validation PSNR", fam, {}))
    if not panels:
        panels.append(("RainNet: validation PSNR", refs, {}))
    return panels


def figures(variants: list[Variant], histories: dict[str, list[dict]]) -> bytes:
    """The sweep's one figure (PNG): a panel per kind of variant it ran."""
    return figure(figure_panels(variants, histories))


# --------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------


def sweep_cpus(params: Params, probe: Params) -> int:
    """The CPUs a local Ray for the sweep needs: what ``max_concurrent_trials`` trials ask for."""
    t, a = probe.train, params.ablate
    group = t.num_workers * t.cpus_per_worker
    per_trial = group + a.trial_cpus
    # + one worker group of headroom: a finished or ASHA-stopped trial's placement group is released
    # asynchronously (Train V2's PlacementGroupCleaner), and the next trial must not wait on it.
    return max(1, math.ceil(max(1, a.max_concurrent_trials) * per_trial + group))


TRAIN_ACTORS = ("TrainController", "RayTrainWorker")  # Train V2's actors: a trial's controller, its workers


def wait_for_train_actors(timeout_s: float = 300.0) -> int:
    """Block until this job's Ray Train actors have exited; returns how many were still alive at the end.

    When ASHA stops a trial, Tune kills the trial's actor and Ray tears down the Train controller and
    workers it owned asynchronously: ``tuner.fit()`` can return while a worker still trains and logs
    another epoch to MLflow, after the table was read from the runs. Waiting here keeps the table and
    the runs in agreement. Without Ray's state API (no dashboard) it only warns.
    """
    import ray
    from ray.util.state import list_actors

    ctx = ray.get_runtime_context()
    job, address = ctx.get_job_id(), ctx.gcs_address  # this Ray's address: another local Ray may be up
    filters = [("job_id", "=", job), ("state", "!=", "DEAD")]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actors = list_actors(address=address, filters=filters, limit=10000)
            alive = [a for a in actors if a.class_name.rsplit(".", 1)[-1] in TRAIN_ACTORS]
        except Exception as e:  # noqa: BLE001 (the state API is optional: a cluster without a dashboard)
            log.warning("cannot list Ray actors (%s); a stopped trial may still log an epoch", e)
            return 0
        if not alive:
            return 0
        if time.monotonic() > deadline:
            log.warning("%d Ray Train actors still alive %.0f s after the sweep", len(alive), timeout_s)
            return len(alive)
        log.debug("waiting for %d Ray Train actors of finished trials to exit", len(alive))
        time.sleep(0.5)


def _first_line(text: str, limit: int = 160) -> str:
    for line in reversed(str(text).strip().splitlines()):
        if "Error" in line or "error" in line:
            return line.strip()[:limit]
    return str(text).strip().splitlines()[-1][:limit] if str(text).strip() else ""


def absolute_paths(params: Params) -> Params:
    """A copy with the local storage root and dataset card as absolute paths (``launch.local_absolute``):
    Tune trials run in other working directories, and what they read must be what the driver planned with."""
    p = copy.deepcopy(params)
    p.storage.root = launch.local_absolute(p.storage.root)
    p.prepare.card = launch.local_absolute(p.prepare.card)
    return p


def failed_child(client, params: Params, key: str, parent: str, v: Variant, error: str):
    exp = tracking.get_or_create_experiment(params.ablate.experiment, client)
    tags = {"mlflow.parentRunId": parent, CHILD_TAG: key, VARIANT_TAG: v.id, "ablation_type": v.type}
    run = client.create_run(exp.experiment_id, run_name=v.id, tags=tags)
    client.set_terminated(run.info.run_id, status="FAILED")
    return client.get_run(run.info.run_id)


def tune_trials(
    params: Params, probe: Params, key: str, parent: str, uri: str, todo: list[Variant],
    per_variant: dict[str, Params], fail: set[str], store: Store,
) -> tuple[dict[str, str], set[str]]:  # fmt: skip
    """Run ``todo`` as Tune trials; returns (variant -> error line, variants stopped early)."""
    import ray.tune
    from ray import tune

    a = params.ablate
    launch.start_ray(probe.train, sweep_cpus(params, probe))
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # propagated to the trials: keep the driver's cwd
    sweep = {
        "key": key,
        "parent_run_id": parent,
        "tracking_uri": uri,
        "env": {**launch.forwarded_env(), tracking.ENV_VAR: uri},
        "git_tags": {k: v for k, v in tracking.standard_tags(params, None).items() if "git" in k},
        "variants": {v.id: dataclasses.asdict(v) for v in todo},
        "params": {v.id: per_variant[v.id] for v in todo},
        "fail": sorted(fail),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), {"cpu": a.trial_cpus})
    scheduler = None
    if a.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric="val_psnr",
            mode="max",
            max_t=probe.train.epochs + probe.train.decay_epochs,
            grace_period=a.asha_grace_period,
            reduction_factor=a.asha_reduction_factor,
            # A trial that reaches the last epoch ends by itself: stopped there, Tune would kill it right
            # after its last report, before rank 0 logs that epoch (the checkpoint comes first).
            stop_last_trials=False,
        )
    fs, path = store.filesystem(store.uri("tune"))
    tuner = tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search([v.id for v in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=a.max_concurrent_trials, scheduler=scheduler),
        run_config=ray.tune.RunConfig(
            name=f"{key}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.tune.FailureConfig(max_failures=a.max_failures),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    wait_for_train_actors()
    errors: dict[str, str] = {}
    stopped: set[str] = set()
    reported: dict[str, list[dict]] = {}
    total = probe.train.epochs + probe.train.decay_epochs
    for result in grid:
        vid = (result.config or {}).get("variant")
        if vid is None:
            continue
        if result.metrics_dataframe is not None:
            reported[vid] = result.metrics_dataframe.to_dict("records")
        if result.error is not None:
            errors[vid] = _first_line(result.error)
            log.warning("variant %s failed: %s", vid, errors[vid])
        elif a.asha and int((result.metrics or {}).get("epoch", total)) < total:
            stopped.add(vid)
    return errors, stopped, reported


def log_reported_epochs(tracking_uri: str, runs: dict[str, Any], reported: dict[str, list[dict]]) -> None:
    """Log to each child run the epochs its trial reported (so checkpointed) but did not log: a worker
    checkpoints an epoch before it logs it, and a trial that ASHA stops is killed right after a report,
    possibly before rank 0 logged that epoch. Through the workers' own logger: never an epoch twice."""
    from components.tracking.training_log import RankZeroLogger
    from components.training.loop import epoch_values

    for vid, records in reported.items():
        run_ = runs.get(vid)
        rows = [r for r in records if isinstance(r.get("epoch"), int | float) and "val_fmse" in r]
        if run_ is None or not rows:
            continue
        logger = RankZeroLogger(tracking_uri, run_.info.run_id, enabled=True, system_metrics=False)
        keys = ("val_", "composite_", "lr", "images_per_s", "epoch_time_s")
        for r in sorted(rows, key=lambda r: r["epoch"]):
            row = {k: float(v) for k, v in r.items() if k.startswith(keys) and isinstance(v, int | float) and v == v}
            logger.log_epoch(int(r["epoch"]), epoch_values(row))
        logger.client.update_run(run_.info.run_id, status=run_.info.status)  # the logger reopened it
