"""The one ``Store``: where heavy artifacts live, a local folder or ``s3://bucket/prefix`` (pyarrow's filesystems).

A stage builds one ``Store`` from its ``storage`` params (``Store.from_config(params.storage)``) and hands
it down; datasets, checkpoints and Tune results are keys under its root (``store.uri("datasets",
name)``), so switching a stage from a laptop folder to a cluster bucket is a change of ``storage.root``
and nothing else. The same store also reads and writes any other URI a stage is given (a ``prepare``
source, an evaluation folder, a generator file, the stage files DVC tracks): a local path, or
``s3://`` through the store's endpoint and region. ``Store()`` (no params) reaches local paths and
``s3://`` through the AWS environment alone (``AWS_ENDPOINT_URL``, credentials).

Operations take full URIs: ``exists``, ``is_dir``, ``size``, ``list_files``, ``list_dirs``,
``read_bytes``, ``open`` (random access, for Parquet), ``sha256``, ``write_bytes`` (atomic), ``delete``;
``check_writable`` (the pre-flight of a writer); on S3 also ``abort_multipart_uploads``, ``check_bucket``
and the conditional writes a lease is made of (``put_if``, ``get_with_etag``, ``delete_if``). ``filesystem(uri)`` gives the pyarrow
filesystem and path for Ray (``read_parquet``, ``RunConfig(storage_filesystem=...)``). A store is a
small frozen value: it pickles to Ray workers, which build their own connections from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from components.workspace import main_workspace

TIMEOUT_ENV = "HARMONIZE_S3_TIMEOUT_S"  # connect / read timeout of boto3 calls (default: botocore's 60 s)
HASH_CHUNK = 8 << 20


class ConditionFailed(OSError):
    """A conditional S3 write or delete whose condition did not hold: another writer got there first."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for both ``s3://`` and local paths)."""
    root = str(root)
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return str(Path(root, *parts))


def resolve_root(root: str) -> str:
    """What a configured ``storage.root`` names: an ``s3://`` root and a local one as written, except in
    a DVC temporary workspace (``workspace.main_workspace``), where a relative root is the project's,
    unless DVC checked the datasets out into the workspace (``prepare``'s output): then the workspace is
    self-contained, and a ``prepare`` rerun inside it writes where DVC looks for its output."""
    if is_s3(root) or Path(root).is_absolute():
        return root
    main = main_workspace()
    if main is not None and not (Path(root) / "datasets").is_dir():
        return str(main / root)
    return root


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """One pyarrow S3 filesystem per (endpoint, region) in a process; credentials from the AWS chain."""
    kwargs: dict = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, region: str, timeout: float):
    """One boto3 S3 client per (endpoint, region, timeout) in a process (the default boto3 session's)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


@dataclass(frozen=True)
class Store:
    """A storage root (local folder or ``s3://bucket/prefix``) and how to reach S3: the configured
    ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) and ``region``."""

    root: str = "."
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_config(cls, storage) -> Store:
        """The store of a ``storage`` params section (``root``, ``endpoint_url``, ``region``), its root
        resolved (``resolve_root``): the one place that decides what ``storage.root`` names."""
        return cls(resolve_root(str(storage.root)), storage.endpoint_url, storage.region)

    def anchored(self) -> Store:
        """The same store with a local root made absolute, for processes that run in another working folder
        (Ray Train workers, Tune trials): there a relative root names another folder, so a worker would
        neither find the checkpoints to resume from nor the names already taken. The stage itself keeps
        the relative root, which is what the files DVC tracks record (the same on every machine)."""
        return self if self.is_s3 else dataclasses.replace(self, root=str(Path(self.root).absolute()))

    # -- addressing ---------------------------------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        return is_s3(self.root)

    def uri(self, *parts: str) -> str:
        """A key under the root as a full URI: ``store.uri("datasets", name)``."""
        return join(self.root, *parts)

    def endpoint(self) -> str | None:
        return (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )

    def filesystem(self, uri: str | None = None) -> tuple[pafs.FileSystem, str]:
        """``(pyarrow filesystem, path inside it)`` of a URI (default: the root)."""
        uri = self.root if uri is None else str(uri)
        if is_s3(uri):
            return _s3_filesystem(self.endpoint(), self.region), uri[len("s3://") :].rstrip("/")
        return pafs.LocalFileSystem(), str(Path(uri).absolute())

    def _client(self):
        """A boto3 client (uploads, multipart uploads, buckets); ``HARMONIZE_S3_TIMEOUT_S`` shortens its
        timeouts, so a stalled server fails the call instead of hanging."""
        return _s3_client(self.endpoint(), self.region, float(os.environ.get(TIMEOUT_ENV) or 60))

    # -- reading ------------------------------------------------------------------------------------

    def _info(self, uri: str) -> pafs.FileInfo:
        fs, path = self.filesystem(uri)
        return fs.get_file_info(path)

    def exists(self, uri: str) -> bool:
        return self._info(uri).type != pafs.FileType.NotFound

    def is_dir(self, uri: str) -> bool:
        """A folder (on S3: a prefix with objects under it)."""
        return self._info(uri).type == pafs.FileType.Directory

    def size(self, uri: str) -> int | None:
        """The size of a file in bytes; None when ``uri`` is not a file."""
        info = self._info(uri)
        return info.size if info.type == pafs.FileType.File else None

    def _children(self, uri: str, kind: pafs.FileType) -> list[pafs.FileInfo]:
        fs, path = self.filesystem(uri)
        return [i for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) if i.type == kind]

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Files directly under a folder URI, sorted, as full URIs."""
        prefix = "s3://" if is_s3(uri) else ""
        return sorted(prefix + i.path for i in self._children(uri, pafs.FileType.File) if i.path.endswith(suffix))

    def list_dirs(self, uri: str) -> list[str]:
        """Names of the folders directly under a folder URI, sorted (an S3 prefix counts as a folder)."""
        return sorted(posixpath.basename(i.path) for i in self._children(uri, pafs.FileType.Directory))

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.filesystem(uri)
        with fs.open_input_stream(path) as f:
            return f.read()

    def open(self, uri: str):
        """A random-access file (``pq.ParquetFile(store.open(uri))``); the caller closes it."""
        fs, path = self.filesystem(uri)
        return fs.open_input_file(path)

    def sha256(self, uri: str) -> str:
        """The hex sha256 of a file, read as one stream in chunks (memory stays flat)."""
        fs, path = self.filesystem(uri)
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    # -- writing ------------------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: readers never see half a file.

        Locally: a temporary name in the same folder, then a rename. On S3 an object only appears once
        its upload completes, which gives the same guarantee; boto3's transfer manager aborts a
        multipart upload that fails (``abort_multipart_uploads`` sweeps those whose abort could not
        reach the server).
        """
        uri = str(uri)
        if is_s3(uri):  # S3 has no folders to create (create_dir would leave empty marker objects)
            from boto3.exceptions import Boto3Error
            from botocore.exceptions import BotoCoreError, ClientError

            bucket, key = _bucket_key(uri)
            try:
                self._client().upload_fileobj(io.BytesIO(data), bucket, key)
            except (Boto3Error, BotoCoreError, ClientError) as exc:
                raise OSError(f"{uri}: upload failed ({exc})") from exc
            return
        fs, path = self.filesystem(uri)
        fs.create_dir(os.path.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def delete(self, uri: str) -> None:
        """Remove a file, or a folder with everything under it; nothing when it is not there."""
        fs, path = self.filesystem(uri)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)

    def check_writable(self, uri: str) -> None:
        """Write, list and delete a probe file under ``uri`` (created when missing): a ``UserError``
        naming the root and what failed (a file where a folder should be, a read-only folder, a missing
        bucket), so a writer fails before its compute, not when it publishes."""
        from components.errors import UserError

        uri = str(uri)
        self.check_bucket()
        if not self.is_s3:
            for parent in (Path(uri), *Path(uri).parents):
                if parent.exists():
                    if not parent.is_dir():
                        raise UserError(f"storage.root={self.root}: {parent} is a file, not a folder")
                    break
        probe = join(uri, f".write-check-{uuid.uuid4().hex}")
        step = "write"
        try:
            self.write_bytes(probe, b"prepare pre-flight\n")
            step = "list"
            name = posixpath.basename(probe)  # listed as absolute paths, the root may be relative
            if name not in {posixpath.basename(f) for f in self.list_files(uri)}:
                raise OSError(f"{probe} was written but is not listed")
            step = "delete"
            self.delete(probe)
            if self.exists(probe):
                raise OSError(f"{probe} is still there after a delete")
        except OSError as exc:
            raise UserError(f"storage.root={self.root}: cannot {step} under {uri}: {exc}") from None

    # -- S3 only ------------------------------------------------------------------------------------

    def put_if(self, uri: str, data: bytes, etag: str | None = None) -> str:
        """One PUT that happens only if ``uri`` does not exist yet (``etag`` None: ``If-None-Match: *``)
        or still holds the version ``etag`` (``If-Match``); returns the new ETag, ``ConditionFailed``
        when the condition did not hold."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _bucket_key(uri)
        cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            return self._client().put_object(Bucket=bucket, Key=key, Body=data, **cond)["ETag"]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                raise ConditionFailed(f"{uri}: {code}") from None
            raise OSError(f"{uri}: conditional write failed ({exc})") from exc
        except BotoCoreError as exc:
            raise OSError(f"{uri}: conditional write failed ({exc})") from exc

    def get_with_etag(self, uri: str) -> tuple[bytes, str, float] | None:
        """``(bytes, ETag, age in seconds by the server's clock)`` of an S3 object; None when absent."""
        from email.utils import parsedate_to_datetime

        from botocore.exceptions import ClientError

        bucket, key = _bucket_key(uri)
        try:
            resp = self._client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                return None
            raise OSError(f"{uri}: cannot read ({exc})") from exc
        now = parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
        return resp["Body"].read(), resp["ETag"], (now - resp["LastModified"]).total_seconds()

    def delete_if(self, uri: str, etag: str) -> bool:
        """Delete an S3 object only while it still holds ``etag``; False when it did not."""
        from botocore.exceptions import ClientError

        bucket, key = _bucket_key(uri)
        try:
            self._client().delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except ClientError:
            return False
        return True


    def abort_multipart_uploads(self, prefix: str, before: float | None = None) -> list[str]:
        """Abort the unfinished multipart uploads under an ``s3://`` prefix (begun before ``before``, a
        Unix time, when given): the parts of an upload whose writer died stay billed and invisible
        otherwise. Returns the aborted objects' URIs."""
        client = self._client()
        bucket, key = _bucket_key(prefix)
        aborted = []
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key):
            for up in page.get("Uploads", []):
                if before is not None and up["Initiated"].timestamp() >= before:
                    continue
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted.append(f"s3://{bucket}/{up['Key']}")
        return aborted

    def check_bucket(self) -> None:
        """``head_bucket`` on the root's bucket (``UserError`` naming it when it is missing or out of
        reach); nothing to check for a local folder."""
        if not self.is_s3:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        from components.errors import UserError

        bucket = _bucket_key(self.root)[0]
        try:
            self._client().head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            what = "does not exist" if code in ("404", "NoSuchBucket") else f"is not accessible ({code})"
            raise UserError(f"storage.root={self.root}: bucket {bucket!r} {what}") from None
        except BotoCoreError as exc:
            raise UserError(f"storage.root={self.root}: cannot reach bucket {bucket!r}: {exc}") from None
