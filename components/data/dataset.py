"""The one dataset handle: a dataset is what its manifest says, published in one atomic step.

``prepare`` writes every shard of a new version under ``<root>/datasets/<name>/v-<id>/`` (a prefix
no reader looks at), then publishes the version by writing ``<root>/datasets/<name>/manifest.json``
last: a temporary file renamed over the old one locally, a single PUT on S3 (atomic per object). A
run killed before that leaves the previous dataset whole. A writer holds the dataset's lock
(``components.data.lock``) throughout, so it may remove what other runs left (versions of dead runs,
unfinished multipart uploads) before it writes and the previous version after it publishes; a run
that fails removes its own unpublished version and nothing else.

Readers (train, evaluate, ablate) open a dataset only through :func:`open_dataset`, which checks every
shard against the manifest (size, Parquet row count, sha256) and fails with a ``DatasetError`` naming
the shard, so a reader sees exactly one published dataset or a clear error, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from components import storage
from components.data.images import BadInput, decode_stored
from components.data.shards import (
    SHARD_RE,
    ShardError,
    ShardInfo,
    ShardWriter,
    check_schema,
    dataset_dir,
    row_size,
)
from components.errors import UserError
from components.storage import Store

log = logging.getLogger(__name__)

FORMAT = "harmonize-manifest/2"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
VERSION_PREFIX = "v-"
STOP_ENV = "HARMONIZE_PREPARE_STOP_BEFORE_PUBLISH"  # tests: SIGSTOP the run before it publishes
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
        self.published = False
        self.writers = {
            split: ShardWriter(store, self.folder, split, rows_per_shard, rows_per_row_group, max_bytes)
            for split in SPLITS
        }

    def add(self, row: dict) -> None:
        self.writers[row["split"]].add(row)

    def end_split(self, split: str) -> None:
        """Write the split's last, partial shard now (the same bytes as at :meth:`publish`): memory then
        holds one split's shard buffer (``max_bytes``) at a time, not one per split."""
        self.writers[split].flush()

    @property
    def folder(self) -> str:
        return storage.join(self.dir, self.version)

    def publish(
        self, content_hash: str | None = None, image_size: int | None = None, lock=None, **extra
    ) -> dict:
        """Close the shards, write the manifest (the one atomic step), then remove older versions.

        ``content_hash`` defaults to a hash of the shards' sha256s; ``extra`` goes into the manifest;
        ``lock`` (a ``DatasetLock``) is checked right before the manifest is written.
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
        if os.environ.get(STOP_ENV):  # tests: a run frozen (SIGSTOP) at its most exposed point
            os.kill(os.getpid(), signal.SIGSTOP)
        if lock is not None:
            lock.check()
        self.store.write_bytes(manifest_uri(self.root, self.name), _json(manifest))
        self.published = True
        self.cleanup()
        return manifest

    def cleanup(self, keep: str | None = None) -> list[str]:
        """Remove every version folder but this writer's and ``keep``, shards of the old flat layout,
        temp files and unfinished multipart uploads begun before this writer started: the leftovers of
        runs that died. Only under the dataset's lock (``DatasetLock``): no other run is writing."""
        store = self.store
        removed = [
            storage.join(self.dir, d)
            for d in store.list_dirs(self.dir)
            if d.startswith(VERSION_PREFIX) and d not in (self.version, keep)
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

    def cleanup_before(self) -> list[str]:
        """Before writing: the leftovers of dead runs go (their space too: a run that failed on a full
        disk does not block the next one); the published version stays. With a manifest that cannot
        be read, nothing is removed."""
        try:
            published = json.loads(self.store.read_bytes(manifest_uri(self.root, self.name)))["version"]
        except FileNotFoundError:
            published = None
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return self.cleanup(keep=str(published) if published else None)

    def discard(self) -> None:
        """After a failure before publishing: remove this writer's own version (and its unfinished
        uploads), nothing else; best effort, the original error is what the user needs to see."""
        if self.published:
            return
        try:
            self.store.delete(self.folder)
            if storage.is_s3(self.folder):
                self.store.abort_multipart_uploads(self.folder + "/")
            log.info("removed %s (this run's unpublished version)", self.folder)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.folder, exc)


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
        """Rows of a split as dicts, read one row group at a time (memory stays flat).

        Every row's size is checked (``height`` / ``width``: the dataset's image size for train and val,
        at most ``test_max_side`` for test) and so are its images' PNG headers when ``columns`` has
        them, before anything is decompressed: a ``ShardError`` naming the shard and row otherwise."""
        side = self.image_size if split != "test" else None
        cap = self.manifest.get("test_max_side") if split == "test" else None
        for s in self.shards.get(split, []):
            try:
                with self.store.open(s.uri) as f:
                    pf = pq.ParquetFile(f)
                    check_schema(pf.schema_arrow, s.uri)
                    cols = list(dict.fromkeys([*columns, "height", "width"]))
                    n = 0
                    for g in range(pf.metadata.num_row_groups):
                        for row in pf.read_row_group(g, columns=cols).to_pylist():
                            _check_row(row, f"{s.uri} row {n}", side, cap)
                            n += 1
                            yield row
            except OSError as exc:
                raise DatasetError(f"{s.uri}: cannot read shard of dataset {self.name} ({exc})") from None


def _check_row(row: dict, where: str, side: int | None, cap: int | None) -> None:
    size = row_size(row["height"], row["width"], side, where)
    if cap and max(size) > cap:
        raise ShardError(f"{where}: the row says {size[0]}x{size[1]}, over the test split's side of {cap}")
    for col, mode in (("composite", "RGB"), ("mask", "L"), ("real", "RGB")):
        if col in row:
            try:
                decode_stored(row[col], f"{where} {col}", size, mode, load=False)
            except BadInput as exc:
                raise ShardError(str(exc)) from None


def _check_shard(store: Store, s: Shard, hash_key: str | None) -> None:
    size = store.size(s.uri)
    if size is None:
        raise DatasetError(f"{s.uri}: shard listed in the manifest is missing; run prepare again")
    if size != s.bytes:
        raise DatasetError(f"{s.uri}: shard is {size} bytes, the manifest says {s.bytes}; run prepare again")
    try:
        with store.open(s.uri) as f:
            pf = pq.ParquetFile(f)
            rows, schema = pf.metadata.num_rows, pf.schema_arrow
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError) for a broken footer
        raise DatasetError(f"{s.uri}: shard is not a readable Parquet file ({exc})") from None
    if rows != s.rows:
        raise DatasetError(f"{s.uri}: shard has {rows} rows, the manifest says {s.rows}")
    check_schema(schema, s.uri)
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
        store.check_bucket()  # a missing bucket is said as such, not as a missing dataset
        raise DatasetError(
            f"{where}: no published dataset ({MANIFEST} missing); run `python -m pipeline.prepare` first, "
            "or point train.dataset / storage.root at prepared data"
        ) from None
    except OSError as exc:
        store.check_bucket()
        raise DatasetError(f"{uri}: cannot read the dataset manifest ({exc})") from None
    except ValueError as exc:
        raise DatasetError(f"{uri}: not a valid manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{uri}: not a {FORMAT} manifest; run `python -m pipeline.prepare` again")
    try:
        shards = {
            split: [_shard(where, uri, manifest, split, i, e) for i, e in enumerate(manifest["shards"].get(split, []))]
            for split in SPLITS
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{uri}: not a valid manifest ({type(exc).__name__}: {exc})") from None
    ds = Dataset(name, where, manifest, store, shards)
    ds.verify(full=verify)
    return ds


VERSION_RE = re.compile(r"v-[A-Za-z0-9_-]+")


def _shard(where: str, manifest_uri: str, manifest: dict, split: str, i: int, e: dict) -> Shard:
    """One manifest entry as a ``Shard`` whose URI is inside the dataset's version folder: the path is
    relative, has no ``..`` / ``.`` / empty part, no scheme, drive or backslash, and starts with the
    manifest's ``version``, so a manifest cannot send a reader to another folder or bucket."""
    version, rel = str(manifest.get("version", "")), e["file"]
    parts = rel.split("/") if isinstance(rel, str) else []
    if not VERSION_RE.fullmatch(version):
        raise DatasetError(f"{manifest_uri}: version {version!r} is not a version folder name (v-...)")
    if (
        len(parts) < 2
        or parts[0] != version
        or any(p in ("", ".", "..") or "\\" in p or ":" in p for p in parts)
    ):
        raise DatasetError(
            f"{manifest_uri}: shards.{split}[{i}] file {rel!r} is not inside the dataset's version folder "
            f"{version}/ (a relative path under it, without '..'); refusing to read it"
        )
    return Shard(storage.join(where, *parts), split, int(e["rows"]), int(e["bytes"]), str(e["sha256"]))


def shard_uris(store: Store, dataset: str, split: str) -> list[str]:
    """The shard URIs of one split of the published dataset, in order, from its verified manifest."""
    return open_dataset(store, dataset).uris(split)
