"""Batched evaluation of a generator on a test set, the way the field reports it (RAINNET.md section 5).

Two sources of test images: the ``prepare`` test shards, or any folder in the iHarmony4 layout (local or
``s3://``). Every image is brought to the evaluation size (the model's training size unless told
otherwise; composite and real bilinear with antialiasing, mask nearest), harmonized by the network at that
size, and scored with ``components.metrics`` against the real image, next to the unharmonized composite.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import posixpath
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from components import metrics, storage
from components.data.sources import iharmony4_subsets
from components.harmonizer import InputError, decode_image, resize_mask, resize_rgb

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PER_IMAGE_COLUMNS = (
    "path", "subset", "fg_ratio", "mse", "psnr", "fmse", "fpsnr",
    "composite_mse", "composite_psnr", "composite_fmse", "composite_fpsnr",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One test image: where its three files are (iHarmony4) or its encoded bytes (shards)."""

    path: str  # what the per-image CSV calls it: <subset>/composite_images/<file> or the shard sample id
    subset: str
    composite: str | bytes
    mask: str | bytes
    real: str | bytes


# --------------------------------------------------------------------------------------------------
# iHarmony4 layout
# --------------------------------------------------------------------------------------------------


def mask_and_real_names(composite_name: str) -> tuple[str, str]:
    """``<id>_<mask>_<k>.jpg`` -> (``<id>_<mask>.png``, ``<id>.jpg``), the iHarmony4 naming rule."""
    stem = composite_name.rsplit(".", 1)[0]
    parts = stem.rsplit("_", 2)
    if len(parts) != 3:
        raise InputError(f"{composite_name}: not an iHarmony4 composite name (<id>_<mask>_<k>.jpg)")
    image_id, mask_no, _ = parts
    return f"{image_id}_{mask_no}.png", f"{image_id}.jpg"


def iharmony4_samples(root: str, split: str = "test", s3=None) -> list[Sample]:
    """All samples of a split under ``root``: one subset folder, or a folder of subset folders.

    A subset folder holds ``composite_images/``, ``masks/``, ``real_images/`` and ``<subset>_<split>.txt``
    (one composite file name per line); without that list every composite is used, with a warning.
    """
    root = str(root).rstrip("/")
    if not storage.is_dir(root, s3):
        raise InputError(f"{root}: evaluation data folder not found")
    subsets = iharmony4_subsets(root, s3)
    if not subsets:
        raise InputError(f"{root}: no iHarmony4 subset (a folder with composite_images/) found")
    samples: list[Sample] = []
    for subset, sdir in subsets:
        names = _split_list(sdir, subset, split, root, s3)
        for name in names:
            mask_name, real_name = mask_and_real_names(name)
            samples.append(
                Sample(
                    path=f"{subset}/composite_images/{name}",
                    subset=subset,
                    composite=storage.join(sdir, "composite_images", name),
                    mask=storage.join(sdir, "masks", mask_name),
                    real=storage.join(sdir, "real_images", real_name),
                )
            )
    if not samples:
        raise InputError(f"{root}: the {split} split is empty")
    return samples


def _split_list(sdir: str, subset: str, split: str, root: str, s3) -> list[str]:
    for candidate in (
        storage.join(sdir, f"{subset}_{split}.txt"),
        storage.join(root, f"{subset}_{split}.txt"),
    ):
        if storage.exists(candidate, s3):
            text = storage.read_bytes(candidate, s3).decode()
            # Lines are file names, sometimes with a <subset>/composite_images/ prefix.
            return [ln.strip().rsplit("/", 1)[-1] for ln in text.splitlines() if ln.strip()]
    log.warning("%s: no %s_%s.txt; evaluating every composite in the folder", sdir, subset, split)
    files = storage.list_files(storage.join(sdir, "composite_images"), s3=s3)
    return [posixpath.basename(f) for f in files if f.lower().endswith(IMAGE_EXTS)]


# --------------------------------------------------------------------------------------------------
# Prepare test shards
# --------------------------------------------------------------------------------------------------


def shard_samples(root: str, dataset: str, split: str = "test", s3=None) -> list[Sample]:
    """Rows of the ``prepare`` shards of a split as samples (encoded images kept in memory)."""
    import pyarrow.parquet as pq

    from components.data.shards import shard_uris

    uris = shard_uris(root, dataset, split, s3=s3)
    if not uris:
        raise InputError(f"{storage.join(root, 'datasets', dataset)}: no {split} shards (run prepare first)")
    samples = []
    cols = ["sample_id", "subset", "composite", "mask", "real"]
    for uri in uris:
        fs, path = storage.filesystem(uri, s3)
        table = pq.read_table(path, filesystem=fs, columns=cols)
        for row in table.to_pylist():
            samples.append(
                Sample(row["sample_id"], row["subset"], row["composite"], row["mask"], row["real"])
            )
    return samples


# --------------------------------------------------------------------------------------------------
# Loading, running, scoring
# --------------------------------------------------------------------------------------------------


def load_sample(sample: Sample, size: int, s3=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(composite, mask 0/255, real) as uint8 at ``size`` x ``size``; errors name the file."""

    def read(src: str | bytes, mode: str) -> np.ndarray:
        if isinstance(src, bytes):
            return decode_image(src, sample.path, mode)
        try:
            data = storage.read_bytes(src, s3)
        except OSError as exc:
            raise InputError(f"{src}: cannot read file ({exc})") from None
        return decode_image(data, src, mode)

    comp, mask, real = read(sample.composite, "RGB"), read(sample.mask, "L"), read(sample.real, "RGB")
    if comp.shape != real.shape or mask.shape != comp.shape[:2]:
        raise InputError(
            f"{sample.path}: composite {comp.shape[:2]}, mask {mask.shape} and real {real.shape[:2]} "
            "differ in size"
        )
    return resize_rgb(comp, size), resize_mask(mask, size), resize_rgb(real, size)


def iter_batches(
    samples: list[Sample], size: int, batch_size: int, s3=None, threads: int = 4
) -> Iterator[tuple[list[Sample], np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of (samples, composites, masks, reals); files are read by a thread pool ahead of use."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        loaded = pool.map(lambda s: load_sample(s, size, s3), samples)
        batch: list = []
        for sample, item in zip(samples, loaded, strict=True):
            batch.append((sample, item))
            if len(batch) == batch_size:
                yield _stack(batch)
                batch = []
        if batch:
            yield _stack(batch)


def _stack(batch):
    samples = [s for s, _ in batch]
    comps, masks, reals = (np.stack([item[i] for _, item in batch]) for i in range(3))
    return samples, comps, masks, reals


def evaluate(
    low_res: Callable[[np.ndarray, np.ndarray], np.ndarray],
    samples: list[Sample],
    size: int,
    batch_size: int = 16,
    s3=None,
    progress: bool = True,
) -> list[dict]:
    """Per-image rows: the model's metrics and the composite's (``composite_*``), plus path/subset/fg_ratio."""
    from tqdm import tqdm

    rows: list[dict] = []
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress)
    for batch_samples, comps, masks, reals in iter_batches(samples, size, batch_size, s3):
        preds = low_res(comps, masks)
        model_m = metrics.batch_metrics(preds, reals, masks)
        comp_m = metrics.batch_metrics(comps, reals, masks)
        for i, s in enumerate(batch_samples):
            row = {"path": s.path, "subset": s.subset, "fg_ratio": float(model_m["fg_ratio"][i])}
            row.update({k: float(model_m[k][i]) for k in metrics.METRICS})
            row.update({f"composite_{k}": float(comp_m[k][i]) for k in metrics.METRICS})
            row["empty_fg"] = bool(model_m["empty_fg"][i])
            rows.append(row)
        bar.update(len(batch_samples))
    bar.close()
    return rows


def summaries(rows: list[dict]) -> dict[str, dict]:
    """``{"composite": summarize(...), "harmonized": summarize(...)}``; the composite first, always."""
    comp_rows = [
        {**r, **{k: r[f"composite_{k}"] for k in metrics.METRICS}} for r in rows
    ]  # the composite scored as if it were the prediction
    return {"composite": metrics.summarize(comp_rows), "harmonized": metrics.summarize(rows)}


def test_set_id(samples: list[Sample], size: int, extra: str = "") -> str:
    """A short hash of what was evaluated (image paths, size, dataset hash): equal ids, comparable metrics."""
    h = hashlib.sha256(f"size={size}\n{extra}\n".encode())
    for s in sorted(samples, key=lambda s: s.path):
        h.update(f"{s.subset}\t{s.path}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def per_image_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def summary_markdown(tables: dict[str, dict], model_label: str = "harmonized") -> str:
    """Markdown tables (overall, per subset, per fg ratio), the unharmonized composite as the first row."""
    lines = []
    order = [("composite (no harmonization)", tables["composite"]), (model_label, tables["harmonized"])]
    sections = [("overall", lambda s: {"all": s["overall"]})]
    sections += [
        ("per subset", lambda s: s["by_subset"]),
        ("by foreground ratio (%)", lambda s: s["by_fg_ratio"]),
    ]
    for title, pick in sections:
        lines += [
            f"### {title}",
            "",
            "| method | group | n | MSE | PSNR | fMSE | fPSNR |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, summ in order:
            for group, g in pick(summ).items():
                vals = [_fmt(g[k]) for k in metrics.METRICS]
                lines.append(f"| {label} | {group} | {g['n']} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"
