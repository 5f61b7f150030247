"""The one dataset handle: a dataset is what its manifest says, published in one atomic step.

``prepare`` writes every shard of a new version under ``<root>/datasets/<name>/v-<id>/`` (a prefix
no reader looks at), then publishes the version by writing ``<root>/datasets/<name>/manifest.json``
last: a temporary file renamed over the old one locally, a single PUT on S3 (atomic per object). A
run killed before that leaves the previous dataset whole; its unfinished version folder (and any
unfinished S3 multipart upload under the dataset's prefix) is removed by the next successful publish,
which never removes the version its manifest points at.

Readers (train, evaluate, ablate) open a dataset only through :func:`open_dataset`, which checks every
shard against the manifest (size, Parquet row count, sha256) and fails with a ``DatasetError`` naming
the shard, so a reader sees exactly one published dataset or a clear error, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from components import storage
from components.cli import UserError
from components.data.shards import SHARD_RE, ShardInfo, ShardWriter, dataset_dir
from components.storage import Store

log = logging.getLogger(__name__)

FORMAT = "harmonize-manifest/2"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
VERSION_PREFIX = "v-"
_VERIFIED: set[tuple[str, str]] = set()  # (manifest sha256, shard file) hashed in this process already


class DatasetError(UserError):
    """A dataset that is missing, unpublished or does not match its manifest (exit 2, shard named)."""


def manifest_uri(root: str, name: str) -> str:
    return storage.join(dataset_dir(root, name), MANIFEST)


# --------------------------------------------------------------------------------------------------
# writing and publishing
# --------------------------------------------------------------------------------------------------


class DatasetWriter:
    """Writes one new version of a dataset (shards of every split) into a store and publishes it.

    Rows go to ``<store root>/datasets/<name>/v-<id>/<split>-NNNNN.parquet``; nothing is visible to
    readers until :meth:`publish` writes the manifest.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        rows_per_shard: int = 4096,
        rows_per_row_group: int = 64,
        max_bytes: int = 256 << 20,
    ):
        self.store, self.root, self.name = store, store.root, name
        self.dir = dataset_dir(store.root, name)
        self.started = time.time()
        self.version = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        folder = storage.join(self.dir, self.version)
        self.writers = {
            split: ShardWriter(store, folder, split, rows_per_shard, rows_per_row_group, max_bytes)
            for split in SPLITS
        }

    def add(self, row: dict) -> None:
        self.writers[row["split"]].add(row)

    def publish(self, content_hash: str | None = None, image_size: int | None = None, **extra) -> dict:
        """Close the shards, write the manifest (the one atomic step), then remove older versions.

        ``content_hash`` defaults to a hash of the shards' sha256s; ``extra`` goes into the manifest.
        """
        written = [info for split in SPLITS for info in self.writers[split].close()]
        if content_hash is None:
            content_hash = hashlib.sha256("".join(i.sha256 for i in written).encode()).hexdigest()
        manifest = {
            "format": FORMAT,
            "name": self.name,
            "root": self.root,
            "dataset_dir": self.dir,
            "version": self.version,
            "content_hash": content_hash,
            "image_size": image_size,
            **extra,
            "counts": {s: sum(i.rows for i in written if i.split == s) for s in SPLITS},
            "shards": {s: [_entry(self.dir, i) for i in written if i.split == s] for s in SPLITS},
        }
        self.store.write_bytes(manifest_uri(self.root, self.name), _json(manifest))
        self.cleanup()
        return manifest

    def cleanup(self) -> list[str]:
        """After publishing: remove every other version folder, shards of the old flat layout and
        unfinished multipart uploads begun before this writer started."""
        store = self.store
        removed = [
            storage.join(self.dir, d)
            for d in store.list_dirs(self.dir)
            if d.startswith(VERSION_PREFIX) and d != self.version
        ]
        removed += [  # old flat layout, temp files of killed runs
            uri
            for uri in store.list_files(self.dir)
            if SHARD_RE.match(posixpath.basename(uri)) or ".tmp-" in posixpath.basename(uri)
        ]
        for uri in removed:
            store.delete(uri)
        if storage.is_s3(self.dir):
            removed += store.abort_multipart_uploads(self.dir + "/", before=self.started)
        for uri in removed:
            log.info("removed %s (not in the published manifest)", uri)
        return removed


def _entry(base: str, info: ShardInfo) -> dict:
    rel = info.uri[len(base) :].lstrip("/\\").replace("\\", "/")
    return {"file": rel, "uri": info.uri, "rows": info.rows, "bytes": info.bytes, "sha256": info.sha256}


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


# --------------------------------------------------------------------------------------------------
# the handle
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    uri: str
    split: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class Dataset:
    """A published dataset: its shards (URIs, rows, sizes, hashes), image size and content hash."""

    name: str
    dir: str
    manifest: dict
    store: Store = field(default_factory=Store)
    shards: dict[str, list[Shard]] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    @property
    def image_size(self) -> int | None:
        return self.manifest.get("image_size")

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def uris(self, split: str) -> list[str]:
        return [s.uri for s in self.shards.get(split, [])]

    def rows(self, split: str) -> int:
        return sum(s.rows for s in self.shards.get(split, []))

    def verify(self, full: bool = True) -> None:
        """Every shard exists with the manifest's size and row count (and sha256 when ``full``)."""
        key = hashlib.sha256(_json(self.manifest)).hexdigest()
        for shards in self.shards.values():
            for s in shards:
                _check_shard(self.store, s, key if full else None)

    def iter_rows(self, split: str, columns: list[str]) -> Iterator[dict]:
        """Rows of a split as dicts, read one row group at a time (memory stays flat)."""
        for s in self.shards.get(split, []):
            try:
                with self.store.open(s.uri) as f:
                    pf = pq.ParquetFile(f)
                    names = set(pf.schema_arrow.names)
                    cols = [c for c in columns if c in names]
                    for g in range(pf.metadata.num_row_groups):
                        yield from pf.read_row_group(g, columns=cols).to_pylist()
            except OSError as exc:
                raise DatasetError(f"{s.uri}: cannot read shard of dataset {self.name} ({exc})") from None


def _check_shard(store: Store, s: Shard, hash_key: str | None) -> None:
    size = store.size(s.uri)
    if size is None:
        raise DatasetError(f"{s.uri}: shard listed in the manifest is missing; run prepare again")
    if size != s.bytes:
        raise DatasetError(f"{s.uri}: shard is {size} bytes, the manifest says {s.bytes}; run prepare again")
    try:
        with store.open(s.uri) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError) for a broken footer
        raise DatasetError(f"{s.uri}: shard is not a readable Parquet file ({exc})") from None
    if rows != s.rows:
        raise DatasetError(f"{s.uri}: shard has {rows} rows, the manifest says {s.rows}")
    if hash_key is None or (hash_key, s.uri) in _VERIFIED:
        return
    if store.sha256(s.uri) != s.sha256:
        raise DatasetError(f"{s.uri}: shard content does not match the manifest's sha256; run prepare again")
    _VERIFIED.add((hash_key, s.uri))


def open_dataset(store: Store, name: str, verify: bool = True) -> Dataset:
    """The published dataset ``<store root>/datasets/<name>``, checked against its manifest.

    ``verify``: hash every shard (once per process); otherwise only sizes are checked.
    """
    where = dataset_dir(store.root, name)
    uri = manifest_uri(store.root, name)
    try:
        manifest = json.loads(store.read_bytes(uri))
    except FileNotFoundError:
        raise DatasetError(
            f"{where}: no published dataset ({MANIFEST} missing); run `python -m pipeline.prepare` first, "
            "or point train.dataset / storage.root at prepared data"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot read the dataset manifest ({exc})") from None
    except ValueError as exc:
        raise DatasetError(f"{uri}: not a valid manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{uri}: not a {FORMAT} manifest; run `python -m pipeline.prepare` again")
    shards = {
        split: [
            Shard(_resolve(where, e["file"]), split, int(e["rows"]), int(e["bytes"]), str(e["sha256"]))
            for e in manifest["shards"].get(split, [])
        ]
        for split in SPLITS
    }
    ds = Dataset(name, where, manifest, store, shards)
    ds.verify(full=verify)
    return ds


def _resolve(base: str, rel: str) -> str:
    """A manifest's shard path, relative to the dataset folder where it was opened (so a moved or
    relative storage root still finds its shards)."""
    return storage.join(base, *posixpath.normpath(rel).split("/"))
