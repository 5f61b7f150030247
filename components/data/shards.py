"""Parquet shards of triplets: the writer ``prepare`` uses and the readers training uses.

Layout: ``<root>/datasets/<name>/v-<id>/<split>-NNNNN.parquet`` (published by the manifest beside it,
see ``components/data/dataset.py``; zstd, PNG bytes, small row groups so a reader
streams a group at a time). The same rows always give the same bytes: no timestamps in the metadata,
fixed schema and column order.

Readers: :class:`ShardDataset` (a torch ``IterableDataset``; each DDP rank and each DataLoader worker
reads a distinct, equally sized part of every epoch) and :func:`ray_dataset` (Ray Data).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from components import storage
from components.data import images
from components.errors import UserError
from components.storage import Store

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("scene_id", pa.string()),
        ("subset", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("method", pa.string()),
        ("composite", pa.binary()),
        ("mask", pa.binary()),
        ("real", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("fg_ratio", pa.float32()),
        ("fg_mse", pa.float32()),
        ("strength", pa.float32()),  # synthesis blend strength in (0, 1]; null for given composites
    ]
)
IMAGE_COLUMNS = ("composite", "mask", "real")
SHARD_RE = re.compile(r"^(train|val|test)-(\d{5})\.parquet$")


def dataset_dir(root: str, name: str) -> str:
    return storage.join(root, "datasets", name)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------


@dataclass
class ShardInfo:
    uri: str
    split: str
    rows: int
    bytes: int
    sha256: str


def table_bytes(rows: list[dict], rows_per_row_group: int) -> bytes:
    """Rows -> Parquet file bytes (deterministic: same rows, same bytes)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        row_group_size=rows_per_row_group,
        write_statistics=[c for c in SCHEMA.names if c not in IMAGE_COLUMNS],
        use_dictionary=["subset", "split", "source", "method"],
    )
    return sink.getvalue().to_pybytes()


class ShardWriter:
    """Buffers rows of one split and writes ``<folder>/<split>-NNNNN.parquet`` files through the store
    (temp name + rename locally; one upload on S3). ``components.data.dataset.DatasetWriter`` gives it a
    version folder."""

    def __init__(
        self,
        store: Store,
        folder: str,
        split: str,
        rows_per_shard: int,
        rows_per_row_group: int,
        max_bytes: int,
    ):
        self.store, self.folder = store, folder
        self.split = split
        self.rows_per_shard, self.rows_per_row_group, self.max_bytes = (
            rows_per_shard,
            rows_per_row_group,
            max_bytes,
        )
        self.rows: list[dict] = []
        self.size = 0
        self.shards: list[ShardInfo] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.size += sum(len(row[c]) for c in IMAGE_COLUMNS)
        if len(self.rows) >= self.rows_per_shard or self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        data = table_bytes(self.rows, self.rows_per_row_group)
        uri = storage.join(self.folder, shard_name(self.split, len(self.shards)))
        self.store.write_bytes(uri, data)
        self.shards.append(
            ShardInfo(uri, self.split, len(self.rows), len(data), hashlib.sha256(data).hexdigest())
        )
        self.rows, self.size = [], 0

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.shards


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------


class ShardError(UserError):
    """A shard whose columns or rows are not what ``prepare`` writes (exit 2, shard and row named)."""


# The columns every reader relies on; a shard without one of them, or with another type, is refused.
REQUIRED = ("sample_id", "subset", "split", "composite", "mask", "real", "height", "width", "fg_ratio")
MAX_ROW_PIXELS = 1 << 26  # a row's own size when no image size is known: 67 M pixels at most


def check_schema(schema: pa.Schema, uri: str) -> None:
    """The shard's column types are the writer's (``SCHEMA``): a ``ShardError`` naming the shard and
    the column otherwise, read from the footer before any row is."""
    for f in SCHEMA:
        i = schema.get_field_index(f.name)
        if i < 0:
            if f.name in REQUIRED:
                raise ShardError(f"{uri}: column {f.name!r} is missing (expected {f.type})")
            continue
        if schema.field(i).type != f.type:
            raise ShardError(f"{uri}: column {f.name!r} is {schema.field(i).type}, expected {f.type}")


def row_size(height: object, width: object, image_size: int | None, where: str) -> tuple[int, int]:
    """(width, height) a row's images must have: its ``height`` / ``width`` columns, which must equal
    the dataset's ``image_size`` when it is known (train / val), and stay under ``MAX_ROW_PIXELS``."""
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ShardError(f"{where}: height / width {height!r} x {width!r} are not positive integers")
    if image_size is not None and (height, width) != (image_size, image_size):
        raise ShardError(f"{where}: the row says {width}x{height}, the dataset's image size is {image_size}")
    if height * width > MAX_ROW_PIXELS:
        raise ShardError(f"{where}: the row says {width}x{height}, over {MAX_ROW_PIXELS} pixels")
    return width, height


def decode_triplet(
    composite: bytes, mask: bytes, real: bytes, size: tuple[int, int], where: str = "triplet"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PNG bytes -> float32 arrays in the network's ranges: images (3, H, W) in [-1, 1], mask (1, H, W) 0/1.

    Decoded by the one image module, which checks each PNG's header against ``size`` (width, height)
    and its mode before decompressing it: a ``ShardError`` naming ``where`` (shard and row) otherwise.
    """
    try:
        c8 = images.decode_stored(composite, f"{where} composite", size, "RGB")
        m8 = images.decode_stored(mask, f"{where} mask", size, "L")
        r8 = images.decode_stored(real, f"{where} real", size, "RGB")
    except images.BadInput as exc:
        raise ShardError(str(exc)) from None
    comp = images.from_uint8(c8.transpose(2, 0, 1))
    real_ = images.from_uint8(r8.transpose(2, 0, 1))
    m = images.foreground(m8).astype(np.float32)[None]
    return comp, m, real_


def hflip_triplet(comp: torch.Tensor, mask: torch.Tensor, real: torch.Tensor, flip: bool):
    """The training flip of one triplet (or a batch): all three mirrored alike, or left as they are.
    Both training readers (this module's and ``components.training.ingest``) flip through it."""
    return (comp.flip(-1), mask.flip(-1), real.flip(-1)) if flip else (comp, mask, real)


class ShardDataset(IterableDataset):
    """Streams triplets from shards (local or s3://) as training tensors.

    Every epoch the rows are put in a seeded random order (shuffled row groups, shuffled rows in each
    group) and cut into ``world_size`` equal contiguous parts (the last ``< world_size`` rows are
    dropped when ``even``), so that DDP ranks get disjoint parts of the same size and each mostly reads
    its own row groups. DataLoader workers split their rank's part again. Call :meth:`set_epoch`
    before each epoch to reshuffle.
    """

    def __init__(
        self,
        uris: list[str],
        hflip: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        store: Store | None = None,
        shuffle: bool = True,
        even: bool = True,
        image_size: int | None = None,
    ):
        super().__init__()
        if not uris:
            raise ValueError("ShardDataset: no shard URIs given")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardDataset: rank {rank} outside world_size {world_size}")
        self.uris, self.hflip, self.rank, self.world_size = list(uris), hflip, rank, world_size
        self.seed, self.store, self.shuffle, self.even = seed, store or Store(), shuffle, even
        self.epoch, self.image_size = 0, image_size  # rows must be image_size x image_size when given
        self._groups: list[tuple[int, int, int, int]] | None = None  # (file, row group, rows, first row)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def groups(self) -> list[tuple[int, int, int, int]]:
        if self._groups is None:
            out = []
            for i in range(len(self.uris)):
                with self.store.open(self.uris[i]) as f:
                    meta = pq.ParquetFile(f).metadata
                check_schema(meta.schema.to_arrow_schema(), self.uris[i])
                first = 0
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    out.append((i, g, n, first))
                    first += n
            self._groups = out
        return self._groups

    def _rank_rows(self) -> tuple[list[tuple[int, int, int]], np.ndarray]:
        """This rank's part: ``[(group index, row in group, global position)]`` in epoch order, and the
        epoch's horizontal-flip draws (indexed by global position)."""
        groups = self.groups()
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(groups)) if self.shuffle else np.arange(len(groups))
        seq = []
        for gi in order:
            rows = rng.permutation(groups[gi][2]) if self.shuffle else np.arange(groups[gi][2])
            seq += [(int(gi), int(r)) for r in rows]
        flips = rng.random(len(seq)) < 0.5
        per = len(seq) // self.world_size if self.even else -(-len(seq) // self.world_size)
        start = self.rank * per
        return [(g, r, start + k) for k, (g, r) in enumerate(seq[start : start + per])], flips

    def __len__(self) -> int:
        return len(self._rank_rows()[0])

    def __iter__(self):
        part, flips = self._rank_rows()
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            per = -(-len(part) // info.num_workers)
            part = part[info.id * per : (info.id + 1) * per]
        groups = self.groups()
        cache: tuple[int, dict] | None = None
        columns = ["sample_id", "subset", "fg_ratio", "height", "width", *IMAGE_COLUMNS]
        for g, r, pos in part:
            if cache is None or cache[0] != g:
                fi, rg, _, _ = groups[g]
                # one shard open at a time: an open ParquetFile keeps ~10 MB of Arrow buffers after a
                # read, so holding every shard open for the epoch grew with the data (~1 GB at 73k)
                with self.store.open(self.uris[fi]) as f:
                    cache = (g, pq.ParquetFile(f).read_row_group(rg, columns=columns).to_pydict())
            rows = cache[1]
            where = f"{self.uris[groups[g][0]]} row {groups[g][3] + r}"
            size = row_size(rows["height"][r], rows["width"][r], self.image_size, where)
            comp, mask, real = decode_triplet(rows["composite"][r], rows["mask"][r], rows["real"][r], size, where)
            comp, mask, real = torch.from_numpy(comp), torch.from_numpy(mask), torch.from_numpy(real)
            comp, mask, real = hflip_triplet(comp, mask, real, self.hflip and bool(flips[pos]))
            yield {
                "composite": comp,
                "mask": mask,
                "real": real,
                "sample_id": rows["sample_id"][r],
                "subset": rows["subset"][r],
                "fg_ratio": float(rows["fg_ratio"][r]),
            }


def _decode_batch(batch: dict, image_size: int | None = None) -> dict:
    comps, masks, reals = [], [], []
    for i, (c, m, r) in enumerate(zip(batch["composite"], batch["mask"], batch["real"], strict=True)):
        where = f"{batch['path'][i]} row with sample_id {batch['sample_id'][i]!r}"
        size = row_size(_py(batch["height"][i]), _py(batch["width"][i]), image_size, where)
        a, b, d = decode_triplet(c, m, r, size, where)
        comps.append(a)
        masks.append(b)
        reals.append(d)
    return {
        "composite": np.stack(comps),
        "mask": np.stack(masks),
        "real": np.stack(reals),
        "sample_id": np.asarray(batch["sample_id"], dtype=object),
        "subset": np.asarray(batch["subset"], dtype=object),
        "fg_ratio": np.asarray(batch["fg_ratio"], dtype=np.float32),
    }


def _py(value: object) -> object:
    """A numpy scalar of a Ray Data batch as the Python value (``int`` for an integer column)."""
    return value.item() if isinstance(value, np.generic) else value


def ray_dataset(
    uris: list[str], store: Store | None = None, batch_size: int = 64, image_size: int | None = None, **read_kwargs
):
    """A Ray Data dataset of decoded triplets (same arrays as :class:`ShardDataset`, batched as numpy).

    Use with Ray Train: pass it in ``datasets={"train": ...}`` and iterate
    ``ray.train.get_dataset_shard("train").iter_torch_batches(...)``.
    """
    import ray.data

    if not uris:
        raise ValueError("ray_dataset: no shard URIs given")
    store = store or Store()
    fs, _ = store.filesystem(uris[0])
    ds = ray.data.read_parquet(
        [store.filesystem(u)[1] for u in uris], filesystem=fs, include_paths=True, **read_kwargs
    )
    ds = ds.select_columns(["sample_id", "subset", "fg_ratio", "height", "width", "path", *IMAGE_COLUMNS])
    return ds.map_batches(
        _decode_batch, fn_kwargs={"image_size": image_size}, batch_size=batch_size, batch_format="numpy"
    )
