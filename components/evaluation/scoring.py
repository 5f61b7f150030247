"""Evaluation of a model on a test set, scored the way users get it and, apart, the way papers report it.

Two sources of test images: the ``prepare`` test shards, or any folder in the iHarmony4 layout (local or
``s3://``). Each image is harmonized by the ``Predictor`` at its native resolution (what ``harmonize``
and the MLflow model return) and scored with ``components.evaluation.metrics`` against the real image, next to
the unharmonized composite. The paper's protocol (the RainNet authors' ``evaluate.py``:
``components.evaluation.paper_protocol``) is scored on the same images as separate columns (``paper_*``) and
tables; the two are never mixed in one number. The network runs on batches of images (any sizes: each
meets the network at the network's size), once per protocol.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from components.data import iharmony4, images
from components.data.images import InputError
from components.evaluation import metrics, paper_protocol
from components.storage import Store

log = logging.getLogger(__name__)
PAPER_PROTOCOL = (
    "RainNet authors' evaluate.py: composite, mask and real resized to the network's size as their loader does "
    "(bilinear; mask binarized, nearest), outputs to uint8 by tensor2im (truncation); MSE and PSNR by "
    "scikit-image (uncapped), fMSE and fPSNR as iHarmony4 (docs/PAPER_PROTOCOL.md)"
)

PER_IMAGE_COLUMNS = (
    "path", "subset", "method", "width", "height", "fg_ratio", "mse", "psnr", "fmse", "fpsnr",
    "composite_mse", "composite_psnr", "composite_fmse", "composite_fpsnr",
    "paper_fg_ratio", "paper_mse", "paper_psnr", "paper_fmse", "paper_fpsnr",
    "paper_composite_mse", "paper_composite_psnr", "paper_composite_fmse", "paper_composite_fpsnr",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One test image: where its three files are (iHarmony4, read through ``store``) or its encoded
    bytes (shards)."""

    path: str  # what the per-image CSV calls it: <subset>/composite_images/<file> or the shard sample id
    subset: str
    composite: str | bytes
    mask: str | bytes
    real: str | bytes
    method: str = ""  # how the composite was made, when known
    store: Store | None = field(default=None, compare=False, repr=False)  # None: Store()


# --------------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------------


def iharmony4_samples(store: Store, root: str, split: str = "test") -> list[Sample]:
    """All samples of a split under ``root`` (read through ``store``): one subset folder, or a folder of
    subset folders."""
    root = str(root).rstrip("/")
    if not store.is_dir(root):
        raise InputError(f"{root}: evaluation data folder not found")
    found = iharmony4.subsets(store, root)
    if not found:
        raise InputError(f"{root}: no iHarmony4 subset (a folder with composite_images/) found")
    samples: list[Sample] = []
    for subset, sdir in found:
        for name in iharmony4.composite_names(store, sdir, subset, split, root):
            comp, mask, real = iharmony4.triplet_uris(sdir, name)
            samples.append(Sample(f"{subset}/{iharmony4.COMPOSITES}/{name}", subset, comp, mask, real, store=store))
    if not samples:
        raise InputError(f"{root}: the {split} split is empty")
    return samples


class ShardSamples:
    """The rows of a split of a published dataset as samples, streamed one row group at a time: only a
    row group's encoded images are in memory, whatever the split's size."""

    COLUMNS = ["sample_id", "subset", "composite", "mask", "real", "method"]

    def __init__(self, dataset, split: str):
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return self.dataset.rows(self.split)

    def __iter__(self) -> Iterator[Sample]:
        for row in self.dataset.iter_rows(self.split, self.COLUMNS):
            yield Sample(
                row["sample_id"], row["subset"], row["composite"], row["mask"], row["real"],
                row.get("method") or "",
            )  # fmt: skip

    def keys(self) -> list[tuple[str, str]]:
        """(subset, path) of every sample, without reading the images."""
        return [(r["subset"], r["sample_id"]) for r in self.dataset.iter_rows(self.split, ["sample_id", "subset"])]


def shard_samples(store: Store, dataset: str, split: str = "test") -> ShardSamples:
    """The ``prepare`` shards of a split (opened and verified through the dataset's manifest)."""
    from components.data.dataset import open_dataset

    ds = open_dataset(store, dataset)
    if not ds.rows(split):
        raise InputError(f"{ds.dir}: no {split} shards in the published dataset (run prepare first)")
    return ShardSamples(ds, split)


def sample_keys(samples) -> list[tuple[str, str]]:
    """(subset, path) of every sample of a list or a :class:`ShardSamples`."""
    return samples.keys() if isinstance(samples, ShardSamples) else [(s.subset, s.path) for s in samples]


# --------------------------------------------------------------------------------------------------
# Loading, running, scoring
# --------------------------------------------------------------------------------------------------


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(composite uint8 (H, W, 3), mask alpha uint8 (H, W), real) at native resolution, files read
    through the sample's store; errors name the file."""

    def read(src: str | bytes) -> tuple[bytes, str]:
        return (src, sample.path) if isinstance(src, bytes) else (images.read_file_bytes(src, sample.store), src)

    comp = images.decode_image(*read(sample.composite))
    mask = images.decode_mask(*read(sample.mask), soft=True)
    real = images.decode_image(*read(sample.real))
    if comp.shape != real.shape or mask.shape != comp.shape[:2]:
        raise InputError(
            f"{sample.path}: composite {comp.shape[:2]}, mask {mask.shape} and real {real.shape[:2]} "
            "differ in size"
        )
    return comp, mask, real


def iter_loaded(samples: Iterable[Sample], threads: int = 4) -> Iterator[tuple[Sample, tuple]]:
    """(sample, (composite, mask, real)) in order; a thread pool reads at most ``2 * threads`` samples
    ahead of use, so memory does not grow with the number of samples."""
    ahead: deque = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for sample in samples:
            ahead.append((sample, pool.submit(load_sample, sample)))
            if len(ahead) >= 2 * threads:
                done, future = ahead.popleft()
                yield done, future.result()
        while ahead:
            done, future = ahead.popleft()
            yield done, future.result()


def _scores(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, prefix: str = "") -> dict:
    m = metrics.image_metrics(pred, real, mask)
    return {f"{prefix}{k}": float(m[k]) for k in metrics.METRICS} | {
        f"{prefix}fg_ratio": float(m["fg_ratio"]), f"{prefix}empty_fg": bool(m["empty_fg"]),
    }  # fmt: skip


def score_batch(predictor, batch: list[tuple[Sample, tuple]]) -> list[dict]:
    """Per-image rows of a batch of (sample, (composite, mask, real)): native-resolution metrics of the
    model and the composite, and ``paper_*`` (``components.evaluation.paper_protocol``). The network runs once on
    the batch for each protocol."""
    prepared = [predictor.prepare(comp, mask, name=sample.path) for sample, (comp, mask, _) in batch]
    native = predictor.finish(prepared)
    paper = paper_protocol.evaluate_batch(predictor.model, [loaded for _, loaded in batch],
                                          predictor.image_size, predictor.device)  # fmt: skip
    rows = []
    for (sample, (comp, mask, real)), (out, _), pp in zip(batch, native, paper, strict=True):
        row = {"path": sample.path, "subset": sample.subset, "method": sample.method}
        row |= {"width": comp.shape[1], "height": comp.shape[0]}
        row |= _scores(out, real, mask)
        row |= {f"composite_{k}": v for k, v in _scores(comp, real, mask).items() if k in metrics.METRICS}
        row |= {f"paper_{k}": float(pp["harmonized"][k]) for k in (*metrics.METRICS, "fg_ratio")}
        row |= {f"paper_composite_{k}": float(pp["composite"][k]) for k in metrics.METRICS}
        row["paper_empty_fg"] = bool(pp["harmonized"]["empty_fg"])
        rows.append(row)
    return rows


def score_sample(predictor, sample: Sample, loaded: tuple) -> dict:
    """One per-image row (``score_batch`` of one)."""
    return score_batch(predictor, [(sample, loaded)])[0]


def evaluate(predictor, samples: Iterable[Sample], progress: bool = True, batch_size: int | None = None) -> list[dict]:
    """Per-image rows (``score_batch``) for every sample, through the predictor users get, in batches of
    ``batch_size`` (default: the predictor's), with a progress bar."""
    from tqdm import tqdm

    size = batch_size or predictor.batch_size
    rows: list[dict] = []
    with tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress) as bar:
        loaded = iter_loaded(samples)
        while batch := list(itertools.islice(loaded, size)):
            rows += score_batch(predictor, batch)
            bar.update(len(batch))
    return rows


def showcase(predictor, samples: Iterable[Sample], count: int, label: str = "output") -> bytes:
    """PNG: the first ``count`` test images (by a hash of their path) as composite | mask | output | real,
    each at its native size through the predictor."""
    from components.evaluation.showcase import Row, showcase_png

    chosen = heapq.nsmallest(count, samples, key=lambda s: hashlib.sha256(s.path.encode()).hexdigest())
    rows = [Row(s.path, *load_sample(s)) for s in chosen]
    return showcase_png(rows, {label: predictor})


def _as(rows: list[dict], src: str, composite_src: str, fg: str = "") -> list[dict]:
    """Rows with ``src`` metrics as the prediction, binned by ``composite_src``'s fMSE and by the
    ``{fg}fg_ratio`` foreground fraction."""
    out = []
    for r in rows:
        row = {"subset": r["subset"], "fg_ratio": r[f"{fg}fg_ratio"], "empty_fg": r.get(f"{fg}empty_fg", False)}
        row |= {k: r[f"{src}{k}"] for k in metrics.METRICS}
        row["composite_fmse"] = r[f"{composite_src}fmse"]
        out.append(row)
    return out


def summaries(rows: list[dict]) -> dict[str, dict]:
    """``{"composite", "harmonized"}`` at native resolution, and ``"paper"``: the same pair by the
    paper's protocol (``components.evaluation.paper_protocol``), overall and per subset. The composite comes first."""
    return {
        "composite": metrics.summarize(_as(rows, "composite_", "composite_")),
        "harmonized": metrics.summarize(_as(rows, "", "composite_")),
        "paper": {
            "protocol": PAPER_PROTOCOL,
            "composite": metrics.summarize(_as(rows, "paper_composite_", "paper_composite_", "paper_")),
            "harmonized": metrics.summarize(_as(rows, "paper_", "paper_composite_", "paper_")),
        },
    }


def by_method(rows: list[dict]) -> dict[str, dict]:
    """fMSE of the model and the composite per synthesis method (native resolution), when known."""
    out: dict[str, dict] = {}
    for method in sorted({r.get("method") or "" for r in rows} - {""}):
        group = [r for r in rows if r.get("method") == method]
        out[method] = {
            "n": len(group),
            "fmse": float(np.mean([r["fmse"] for r in group])),
            "composite_fmse": float(np.mean([r["composite_fmse"] for r in group])),
        }
    return out


def test_set_id(samples, extra: str = "") -> str:
    """A short hash of what was evaluated (image paths, dataset hash): equal ids, comparable metrics.

    Scores are at native resolution, so the network's size is not part of the test set."""
    h = hashlib.sha256(f"native\n{extra}\n".encode())
    for subset, path in sorted(sample_keys(samples), key=lambda k: k[1]):
        h.update(f"{subset}\t{path}\n".encode())
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


def summary_markdown(
    tables: dict[str, dict], model_label: str = "harmonized", methods: dict | None = None, size: int = 0
) -> str:
    """Markdown tables (overall, per subset, by foreground ratio, by the composite's own error), the
    unharmonized composite as the first row; then the paper's protocol, apart."""
    lines = ["### Native resolution, through the predictor (what users get)", ""]
    lines += _tables(tables, model_label)
    if methods:
        lines += ["#### by synthesis method (fMSE)", "", "| method | n | composite | model | ratio |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, g in methods.items():
            ratio = g["fmse"] / g["composite_fmse"] if g["composite_fmse"] else float("nan")
            lines.append(
                f"| {name} | {g['n']} | {_fmt(g['composite_fmse'])} | {_fmt(g['fmse'])} | {ratio:.2f} |"
            )
        lines.append("")
    if "paper" in tables:
        lines += [f"### Paper protocol (the authors' evaluate.py, the network alone at {size}x{size})", ""]
        lines += _tables(tables["paper"], model_label, subsets_only=True)
    return "\n".join(lines)


def _tables(tables: dict, model_label: str, subsets_only: bool = False) -> list[str]:
    lines = []
    order = [("composite (no harmonization)", tables["composite"]), (model_label, tables["harmonized"])]
    sections = [("overall", lambda s: {"all": s["overall"]}), ("per subset", lambda s: s["by_subset"])]
    if not subsets_only:
        sections += [
            ("by foreground ratio (%)", lambda s: s["by_fg_ratio"]),
            ("by the composite's own fMSE", lambda s: s.get("by_composite_error", {})),
        ]
    for title, pick in sections:
        lines += [
            f"#### {title}",
            "",
            "| method | group | n | MSE | PSNR | fMSE | fPSNR |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, summ in order:
            for group, g in pick(summ).items():
                vals = [_fmt(g[k]) for k in metrics.METRICS]
                lines.append(f"| {label} | {group} | {g['n']} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"
