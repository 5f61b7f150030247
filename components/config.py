"""Typed configuration: ``params.yaml`` (plus an optional profile and ``key=value`` overrides) -> dataclasses.

One source of truth: every CLI flag of every stage is an override of a key here (``-S train.epochs=2``,
the same syntax as ``dvc exp run -S``). Unknown keys and wrong types fail loudly, naming the file and key,
because a silently ignored typo in a training config costs a whole run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES_DIR = "profiles"


class ConfigError(ValueError):
    """A params file, profile or override that cannot be turned into the typed config."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class StorageConfig:
    """Where heavy artifacts live: a local folder or ``s3://bucket/prefix``."""

    root: str = "data/store"
    # S3-compatible endpoint (MinIO, moto, ...); ``AWS_ENDPOINT_URL`` is used when this is null.
    endpoint_url: str | None = None
    region: str = "us-east-1"


@dataclass
class SourceConfig:
    """One input of ``prepare``: ``builtin``, ``photos_masks`` or ``iharmony4``; ``path`` local or s3://."""

    kind: str = "builtin"
    path: str | None = None
    # Subset name written on every row (defaults: the kind for builtin/photos_masks, the folder name
    # of each subset for iharmony4).
    subset: str | None = None
    # Use at most this many photos / composites from the source (null: all).
    limit: int | None = None
    # photos_masks only: this many extra object-like masks per *train* photo, grown from the photo's own
    # segments (like the builtin source's), each one more training entry with composites_per_photo
    # composites; val / test keep only the hand-drawn masks. 0: none.
    extra_masks: int = 0


@dataclass
class PrepareConfig:
    name: str = "default"  # dataset name: shards go to <storage.root>/datasets/<name>/
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    image_size: int = 64
    seed: int = 0
    crops_per_photo: int = 96  # builtin source: crops per photo, at several scales
    composites_per_photo: int = 2  # synthesized composites per (crop of a) photo
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    methods: list[str] = field(
        default_factory=lambda: ["lab_transfer", "rgb_transfer", "histogram", "retouch", "tone_curve"]
    )
    # Methods used only for the test split's composites (train / val never see them): a measure of
    # generalization beyond prepare's own recipe.
    holdout_methods: list[str] = field(default_factory=lambda: ["idt"])
    # Test triplets keep their native size, downscaled (aspect kept) when the longer side exceeds
    # this (null: no cap); train / val are image_size x image_size.
    test_max_side: int | None = 256
    # Rejection band on the foreground MSE between composite and real (0..255 scale).
    fg_mse_min: float = 10.0
    fg_mse_max: float = 2500.0
    fg_ratio_min: float = 0.03
    fg_ratio_max: float = 0.5
    rows_per_shard: int = 4096
    rows_per_row_group: int = 64
    shard_max_mb: float = 256.0  # a shard is closed at rows_per_shard rows or this many MB of images
    processes: int = 1
    max_pixels: int = 64_000_000  # larger input images are skipped (counted as too_large in the card)
    card: str = "metrics/dataset_card.json"
    manifest: str = "data/prepared/manifest.json"
    samples_png: str = "reports/prepare_samples.png"


@dataclass
class ModelConfig:
    """Model sections are registry specs: ``name`` picks the builder, the other keys are its arguments.

    ``components.models.registry.build_model`` validates the arguments against the builder.
    """

    generator: dict[str, Any] = field(
        default_factory=lambda: {"name": "rainnet", "placement": "rain-decoder", "ngf": 64}
    )
    discriminator: dict[str, Any] = field(default_factory=lambda: {"name": "global_d"})
    domain_discriminator: dict[str, Any] = field(default_factory=lambda: {"name": "domain_d"})


@dataclass
class TrainConfig:
    run_name: str | None = None  # null: <model>-<placement>-<dataset>, e.g. rainnet-rain-decoder-default
    experiment: str = "harmonization-train"
    dataset: str | None = None  # dataset name under <root>/datasets (null: prepare.name)
    epochs: int = 10  # epochs at constant lr ...
    decay_epochs: int = 0  # ... then this many epochs of linear decay to 0
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    init_gain: float = 0.02
    gan: bool = False  # false: L1 only (quick runs); true: + global D and domain-verification D
    lambda_adv: float = 1.0
    lambda_v: float = 1.0
    lambda_l1: float = 100.0  # weight of the pixel loss (L1 in the paper)
    loss: str = "l1"  # pixel loss: l1 (paper) | fn_mse (foreground-normalized MSE, the fMSE metric)
    fn_min_area: float = 100.0  # fn_mse: the foreground area never counts below this many pixels
    gp_weight: float = 0.0
    lambda_mask: float = 1.0  # DIH's mask head (BCE against the foreground mask); unused by RainNet
    amp: bool = True  # bf16 autocast, on GPU only
    channels_last: bool = False  # channels-last weights and inputs, on GPU only (components/training/cuda.py)
    loader_workers: int = 0  # DataLoader processes decoding ahead of each training worker (pinned on GPU)
    hflip: bool = True
    colour_jitter: float = 0.0  # 0..1: one random global colour change per training pair (augment.py)
    identity_fraction: float = 0.0  # share of training composites replaced by their real (leave alone)
    ema_decay: float = 0.0  # > 0: validate and ship an exponential moving average of the weights
    calibrate: bool = False  # transform heads: fit the correction's strength on the val split (calibrate.py)
    # ... and a dead zone that keeps the val composites under fMSE 300 within this factor of their own
    # error (null: the strength alone, by val fMSE)
    calibrate_low_bin_max: float | None = None
    seed: int = 0
    reader: str = "shards"  # training ingest: shards (ShardDataset in the worker) | ray_data (Ray Data)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    max_failures: int = 1
    # Steps whose loss is NaN / Inf are skipped (and counted: MLflow metric nonfinite_steps); this many in
    # a row stop the training with an error (the weights have diverged: lower train.lr).
    max_nonfinite_steps: int = 5
    log_every_steps: int = 10
    max_steps_per_epoch: int | None = None
    sample_grid: int = 4  # validation samples in the per-epoch grid PNG
    checkpoints_to_keep: int = 2
    # Every checkpoint of a run damaged (none passes its sha256): false stops with an error naming the
    # folder; true trains again from epoch 1 beside the damaged folders (an explicit choice, never silent).
    restart_if_damaged: bool = False
    keep: str = "last"  # the model a run produces: last (epoch) | best (lowest val fMSE; early stopping)
    weights_out: str = "models/generator.pt"
    metrics_out: str = "metrics/train.json"
    plots_out: str = "metrics/train_epochs.csv"


@dataclass
class AblateConfig:
    """``python -m pipeline.ablate``: a Ray Tune sweep of trainings that differ only in the generator.

    Every trial trains with the ``train`` section (same data, epochs and seed), its generator the
    ``model.generator`` section with the variant's family / placement / head put in.
    """

    experiment: str = "harmonization-ablation"
    name: str | None = None  # sweep name; null: ablation-<dataset>
    # RainNet placements (Table 1 names or I/R strings); null: all of Table 1, baseline and all-rain too
    placements: list[str] | None = None
    families: list[str] = field(default_factory=lambda: ["rainnet"])  # rainnet | dih | dih_rain
    heads: list[str] | None = None  # null: model.generator.head
    epochs: int | None = None  # null: train.epochs (and train.decay_epochs)
    decay_epochs: int | None = None
    # Resources: each trial is a Tune function (trial_cpus) that runs a TorchTrainer with these workers
    # (null: the train section's); max_concurrent_trials trainings at once.
    max_concurrent_trials: int = 2
    trial_cpus: float = 0.1
    num_workers: int | None = None
    cpus_per_worker: int | None = None
    use_gpu: bool | None = None
    gpus_per_worker: float | None = None
    max_failures: int = 0  # Tune-level retries of a failed trial
    asha: bool = False  # ASHA early stopping on val PSNR (off: the paper compares whole curves)
    asha_grace_period: int = 2
    asha_reduction_factor: int = 2
    csv_out: str = "reports/ablation.csv"
    md_out: str = "reports/ablation.md"
    figure_out: str = "reports/ablation.png"  # one panel per kind of variant the sweep ran


@dataclass
class EvaluateConfig:
    experiment: str = "harmonization-eval"
    model: str = "models/generator.pt"  # checkpoint file, runs:/<id>/model or models:/<name>@<alias>
    data: str | None = None  # iHarmony4-layout folder (local or s3://); null: the prepare test shards
    split: str = "test"  # which list (<subset>_<split>.txt) or shard split to evaluate
    image_size: int | None = None  # evaluation size; null: the model's training size
    batch_size: int = 16
    device: str = "auto"  # auto: cuda when present, else cpu
    run_name: str | None = None  # null: eval-<model>-<placement>-<data>
    per_image_out: str = "metrics/eval_per_image.csv"
    summary_out: str = "metrics/eval.json"
    showcase_out: str = "reports/eval_showcase.png"  # composite | mask | output | real, native size
    showcase_count: int = 4
    summary_md: str = "reports/eval_summary.md"


@dataclass
class RegisterConfig:
    model_name: str | None = None  # null: derived from the generator ("rainnet" or "dih")
    eval_in: str = "metrics/eval.json"  # evaluate's summary: which model, which test set, its metrics
    metric: str = "fmse"  # promotion rule: challenger becomes champion if it beats the champion ...
    mode: str = "min"  # ... on this overall metric in this direction
    # ... and only if it also beats the unharmonized composite on that test set (a model that makes
    # composites worse is never served as champion)
    beat_composite: bool = True
    card_out: str = "reports/model_card.md"
    out: str = "metrics/register.json"


@dataclass
class HarmonizeConfig:
    model: str = "models/generator.pt"  # checkpoint file, s3://, runs:/<id>/model or models:/<name>@<alias>
    max_pixels: int = 64_000_000  # larger inputs are refused (memory): about 8000x8000
    mapping: str = "poly2"  # low-res -> full-res: poly2, poly3, affine (colour mappings) or upsample
    device: str = "auto"
    batch_size: int = 16  # a folder: pairs per network batch (and at most max_pixels pixels together)


@dataclass
class Params:
    storage: StorageConfig = field(default_factory=StorageConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    harmonize: HarmonizeConfig = field(default_factory=HarmonizeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate one scalar or container value against a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: null is not allowed")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e9 (no dot) as a string; a user who writes lr=1e9 means the number.
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
            if not math.isfinite(number):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf: no key means either (a NaN weight trains nothing)
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint} (known: {', '.join(sorted(names))})")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


# Ranges checked after the types: (section, key, test, what the key must be). A value out of range is a
# ConfigError before any data is read or Ray is started, not a hang or a crash deep inside training.
_POSITIVE = (lambda v: 0 < v < math.inf, "a finite number greater than 0")
FLOAT32_MAX = 3.4028234663852886e38  # the weights are float32: a larger lr overflows inside the optimizer
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_NOT_NEGATIVE = (lambda v: v >= 0, "0 or more")
_FRACTION = (lambda v: 0 <= v <= 1, "between 0 and 1")
_BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES: dict[tuple[str, str], tuple[typing.Callable[[Any], bool], str]] = {
    ("train", "epochs"): _NOT_NEGATIVE,
    ("train", "decay_epochs"): _NOT_NEGATIVE,
    ("train", "batch_size"): _AT_LEAST_1,
    ("train", "lr"): (
        lambda v: 0 < v <= FLOAT32_MAX,
        "a number greater than 0 that float32 holds (<= 3.4e38)",
    ),
    ("train", "beta1"): _BETA,
    ("train", "beta2"): _BETA,
    ("train", "num_workers"): _AT_LEAST_1,
    ("train", "cpus_per_worker"): _AT_LEAST_1,
    ("train", "gpus_per_worker"): _POSITIVE,
    ("train", "loader_workers"): _NOT_NEGATIVE,
    ("train", "max_failures"): (lambda v: v >= -1, "-1 (retry forever) or more"),
    ("train", "max_nonfinite_steps"): _AT_LEAST_1,
    ("train", "log_every_steps"): _AT_LEAST_1,
    ("train", "max_steps_per_epoch"): _AT_LEAST_1,
    ("train", "checkpoints_to_keep"): _AT_LEAST_1,
    ("train", "sample_grid"): _NOT_NEGATIVE,
    ("train", "colour_jitter"): _FRACTION,
    ("train", "identity_fraction"): _FRACTION,
    ("train", "ema_decay"): _FRACTION,
    ("train", "fn_min_area"): _POSITIVE,
    ("ablate", "epochs"): _NOT_NEGATIVE,
    ("ablate", "decay_epochs"): _NOT_NEGATIVE,
    ("ablate", "num_workers"): _AT_LEAST_1,
    ("ablate", "cpus_per_worker"): _AT_LEAST_1,
    ("ablate", "gpus_per_worker"): _POSITIVE,
    ("evaluate", "batch_size"): _AT_LEAST_1,
    ("prepare", "image_size"): _AT_LEAST_1,
}


def check_ranges(params: Params) -> Params:
    """``ConfigError`` naming the first key whose value is out of its range (null always passes)."""
    for (section, key), (ok, what) in RANGES.items():
        value = getattr(getattr(params, section), key)
        if value is not None and not ok(value):
            raise ConfigError(f"{section}.{key}={value!r}: expected {what}")
    t = params.train
    if t.epochs + t.decay_epochs < 1:
        raise ConfigError(
            f"train.epochs + train.decay_epochs = {t.epochs + t.decay_epochs}: expected at least 1"
        )
    return params


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return parts, value


def check_override_key(text: str, parts: list[str]) -> None:
    """A ``-S`` key that names no params key fails here, naming the override (not the params file, which
    has no such line) and the nearest key (``train.lrr`` -> did you mean ``train.lr``?). Keys inside a
    free-form mapping (``model.generator.*``) are checked where that mapping is used."""
    cls: Any = Params
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            where = ".".join(parts[:i]) or "the top level"
            hint = (f"did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1 :]])}?" if close
                    else f"{where} has {', '.join(names)}")  # fmt: skip
            raise ConfigError(f"-S {text}: no params key {'.'.join(parts)}; {hint}")
        cls = typing.get_type_hints(cls)[part]


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        check_override_key(text, parts)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_params(
    path: str | Path = "params.yaml",
    overrides: typing.Iterable[str] = (),
    profile: str | None = None,
) -> Params:
    """Read ``params.yaml``, merge ``profiles/<profile>.yaml`` over it, then apply ``key=value`` overrides."""
    path = Path(path)
    data = _read_yaml(path)
    if profile:
        prof = Path(profile)
        if not prof.suffix:
            prof = path.parent / PROFILES_DIR / f"{profile}.yaml"
        data = _deep_merge(data, _read_yaml(prof))
    data = apply_overrides(data, overrides)
    try:
        return check_ranges(_from_dict(Params, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def params_from_dict(data: dict, overrides: typing.Iterable[str] = ()) -> Params:
    """Build ``Params`` from a mapping (the defaults for anything missing), e.g. without a params file."""
    return check_ranges(_from_dict(Params, apply_overrides(data, overrides), ""))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the form MLflow params and DVC params take."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
