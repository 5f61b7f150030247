"""A dataset's manifest and shards are not trusted: whoever can write the store can write both, hashes
included. Each case is injected for real into a prepared dataset (the manifest's sizes and sha256 made to
match, as an attacker would): shard paths that leave the dataset (``../``, an absolute path, another
bucket), a decompression bomb, a 3000x3000 image in a 32-px dataset, columns of the wrong type. Each is a
clear error naming the manifest entry or the shard and row, before anything is decoded."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.dataset import DatasetError, open_dataset
from components.data.shards import ShardDataset, ShardError
from components.evaluation.scoring import shard_samples
from components.storage import Store
from tests.prepare.conftest import run_prepare

FEW = [
    "prepare.image_size=32", "prepare.crops_per_photo=2", "prepare.composites_per_photo=1",
    "prepare.sources=[{kind: builtin, limit: 8}]",
]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    run_prepare(out, *FEW)
    return out / "store"


@pytest.fixture
def root(prepared, tmp_path) -> Path:
    """A fresh copy of the prepared store for one test to damage."""
    shutil.copytree(prepared, tmp_path / "store")
    return tmp_path / "store"


def manifest_path(root: Path) -> Path:
    return root / "datasets" / "default" / "manifest.json"


def edit_manifest(root: Path, edit) -> dict:
    m = json.loads(manifest_path(root).read_text())
    edit(m)
    manifest_path(root).write_text(json.dumps(m))
    return m


def rewrite_shard(root: Path, split: str, change) -> Path:
    """Rewrite the first shard of ``split`` through ``change(table) -> table`` and make the manifest's
    bytes, rows and sha256 match it: only the content itself is wrong."""
    m = json.loads(manifest_path(root).read_text())
    entry = m["shards"][split][0]
    shard = root / "datasets" / "default" / entry["file"]
    table = change(pq.read_table(shard))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=4)
    data = sink.getvalue().to_pybytes()
    shard.write_bytes(data)
    entry.update(bytes=len(data), rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest())
    manifest_path(root).write_text(json.dumps(m))
    return shard


def set_cell(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def bomb_png(side: int = 20000) -> bytes:
    """A real decompression bomb: a valid grayscale PNG of side x side zeros (400 M pixels), ~0.4 MB."""
    z = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# -- the manifest -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "{version}/../../other/train-00000.parquet"])
def test_a_shard_path_outside_the_version_folder_is_refused(root, path):
    outside = root / "datasets" / "other" / "train-00000.parquet"  # a readable file the path may reach
    outside.parent.mkdir(parents=True)
    m = json.loads(manifest_path(root).read_text())
    shutil.copy(root / "datasets" / "default" / m["shards"]["train"][0]["file"], outside)
    edit_manifest(root, lambda m: m["shards"]["val"][0].update(file=path.format(version=m["version"])))
    with pytest.raises(DatasetError) as err:
        open_dataset(Store(str(root)), "default")
    assert str(manifest_path(root)) in str(err.value) and "shards.val[0]" in str(err.value)
    assert "not inside the dataset's version folder" in str(err.value)


def test_a_manifest_on_s3_cannot_reach_another_bucket(moto_endpoint, s3_bucket, prepared):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    other = f"{s3_bucket[5:]}-other"
    client.create_bucket(Bucket=other)
    m = json.loads(manifest_path(prepared).read_text())
    for split in ("train", "val", "test"):
        for e in m["shards"][split]:
            data = (prepared / "datasets" / "default" / e["file"]).read_bytes()
            client.put_object(Bucket=s3_bucket[5:], Key=f"store/datasets/default/{e['file']}", Body=data)
    secret = (prepared / "datasets" / "default" / m["shards"]["val"][0]["file"]).read_bytes()
    client.put_object(Bucket=other, Key="x.parquet", Body=secret)  # the other bucket's object, readable
    m["shards"]["val"][0]["file"] = f"../../../../{other}/x.parquet"
    client.put_object(Bucket=s3_bucket[5:], Key="store/datasets/default/manifest.json", Body=json.dumps(m))
    with pytest.raises(DatasetError, match=r"manifest\.json: shards\.val\[0\] file '\.\./\.\./\.\./\.\./"):
        open_dataset(Store(f"{s3_bucket}/store", endpoint_url=moto_endpoint), "default")


# -- the shards' content --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_in_a_shard_is_refused_before_decoding(root):
    shard = rewrite_shard(root, "train", lambda t: set_cell(t, "mask", 1, bomb_png()))
    ds = open_dataset(Store(str(root)), "default")  # sizes and hashes match: the content is the attack
    reader = ShardDataset(ds.uris("train"), store=Store(str(root)), shuffle=False, image_size=32)
    with pytest.raises(ShardError, match=rf"{shard} row 1 mask: image too large \[too_large\]"):
        list(reader)
    with pytest.raises(ShardError, match=rf"{shard} row 1 mask: image too large"):
        list(ds.iter_rows("train", ["sample_id", "mask"]))


def test_an_image_larger_than_the_dataset_is_refused(root):
    big = png(np.zeros((3000, 3000, 3), np.uint8))

    def plant(t: pa.Table) -> pa.Table:  # a 3000x3000 real, its row saying so too
        t = set_cell(t, "real", 0, big)
        return set_cell(set_cell(t, "height", 0, 3000), "width", 0, 3000)

    shard = rewrite_shard(root, "val", plant)
    ds = open_dataset(Store(str(root)), "default")
    reader = ShardDataset(ds.uris("val"), store=Store(str(root)), shuffle=False, even=False, image_size=32)
    with pytest.raises(ShardError, match=rf"{shard} row 0: the row says 3000x3000, the dataset's image size is 32"):
        list(reader)
    with pytest.raises(ShardError, match=rf"{shard} row 0: the row says 3000x3000"):
        list(ds.iter_rows("val", ["sample_id"]))

    rewrite_shard(root, "val", lambda t: set_cell(set_cell(t, "height", 0, 32), "width", 0, 32))  # row lies
    reader = ShardDataset(ds.uris("val"), store=Store(str(root)), shuffle=False, even=False)
    with pytest.raises(ShardError, match=rf"{shard} row 0 real: image too large .*3000x3000"):
        list(reader)


def test_a_test_image_over_the_test_side_is_refused_by_evaluate(root):
    big = png(np.zeros((300, 400, 3), np.uint8))  # over test_max_side (256)
    shard = rewrite_shard(
        root, "test", lambda t: set_cell(set_cell(set_cell(t, "composite", 0, big), "height", 0, 300), "width", 0, 400)
    )
    samples = shard_samples(Store(str(root)), "default", "test")
    with pytest.raises(ShardError, match=rf"{shard} row 0: the row says 400x300, over the test split's side of 256"):
        list(samples)


def test_columns_of_the_wrong_type_are_refused_when_the_dataset_opens(root):
    def as_text(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("height")
        return t.set_column(i, pa.field("height", pa.string()), pa.array([str(v) for v in t.column(i).to_pylist()]))

    shard = rewrite_shard(root, "train", as_text)
    with pytest.raises(ShardError, match=rf"{shard}: column 'height' is string, expected int32"):
        open_dataset(Store(str(root)), "default")

    rewrite_shard(root, "train", lambda t: t.drop_columns(["height"]).append_column("height", pa.array(
        [32] * t.num_rows, pa.int32())))  # fmt: skip
    rewrite_shard(root, "train", lambda t: set_cell(t, "composite", 0, None))  # a null image
    ds = open_dataset(Store(str(root)), "default")
    reader = ShardDataset(ds.uris("train"), store=Store(str(root)), shuffle=False, image_size=32)
    with pytest.raises(ShardError, match=rf"{shard} row 0 composite: cannot read as an image .*got NoneType"):
        list(reader)
