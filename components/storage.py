"""One URI root for heavy artifacts: a local folder or ``s3://bucket/prefix`` (pyarrow's filesystems).

Everything that reads or writes shards, checkpoints or models goes through here, so that switching a
stage from a laptop folder to a cluster bucket is a change of ``storage.root`` and nothing else.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for both ``s3://`` and local paths)."""
    root = str(root)
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return str(Path(root, *parts))


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_config(cls, storage) -> S3Options:
        return cls(endpoint_url=storage.endpoint_url, region=storage.region)

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path inside it)`` for a URI; credentials come from the usual AWS variables."""
    uri = str(uri)
    if is_s3(uri):
        s3 = s3 or S3Options()
        endpoint = s3.resolved_endpoint()
        kwargs: dict = {"region": s3.region}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        fs = pafs.S3FileSystem(**kwargs)
        return fs, uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


TIMEOUT_ENV = "HARMONIZE_S3_TIMEOUT_S"  # connect / read timeout of boto3 calls (default: botocore's 60 s)


def boto3_client(s3: S3Options | None = None):
    """A boto3 S3 client honouring the configured endpoint (for buckets, listing, uploads).

    ``HARMONIZE_S3_TIMEOUT_S`` shortens its timeouts (a stalled server fails the call instead of hanging).
    """
    import boto3
    from botocore.config import Config

    s3 = s3 or S3Options()
    timeout = float(os.environ.get(TIMEOUT_ENV) or 60)
    config = Config(connect_timeout=timeout, read_timeout=timeout)
    return boto3.client("s3", endpoint_url=s3.resolved_endpoint(), region_name=s3.region, config=config)


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def abort_multipart_uploads(prefix: str, s3: S3Options | None = None, before: float | None = None) -> list[str]:
    """Abort the unfinished multipart uploads under an ``s3://`` prefix (begun before ``before``, a Unix
    time, when given): the parts of an upload whose writer died stay billed and invisible otherwise.
    Returns the aborted objects' URIs."""
    client = boto3_client(s3)
    bucket, key = _bucket_key(prefix)
    aborted = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key):
        for up in page.get("Uploads", []):
            if before is not None and up["Initiated"].timestamp() >= before:
                continue
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted.append(f"s3://{bucket}/{up['Key']}")
    return aborted


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str, s3: S3Options | None = None) -> None:
    fs, path = filesystem(uri, s3)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, suffix: str = "", s3: S3Options | None = None) -> list[str]:
    """Files directly under a folder URI, sorted, as full URIs."""
    fs, path = filesystem(uri, s3)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in info if i.type == pafs.FileType.File and i.path.endswith(suffix))


def is_dir(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dirs(uri: str, s3: S3Options | None = None) -> list[str]:
    """Names of the folders directly under a folder URI, sorted (an S3 prefix counts as a folder)."""
    fs, path = filesystem(uri, s3)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in info if i.type == pafs.FileType.Directory)


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    fs, path = filesystem(uri, s3)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write to a temporary name, then rename: readers never see half a file.

    On S3 an object only appears once its upload completes, which gives the same guarantee; boto3's
    transfer manager aborts a multipart upload that fails (``abort_multipart_uploads`` sweeps those
    whose abort could not reach the server).
    """
    if is_s3(uri):  # S3 has no folders to create (create_dir would leave empty marker objects)
        import io

        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _bucket_key(uri)
        try:
            boto3_client(s3).upload_fileobj(io.BytesIO(data), bucket, key)
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise OSError(f"{uri}: upload failed ({exc})") from exc
        return
    fs, path = filesystem(uri, s3)
    parent = os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
