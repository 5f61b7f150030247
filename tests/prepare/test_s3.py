"""Against a real S3 endpoint (moto server): sources read from s3://, shards written there and read back."""

from __future__ import annotations

import hashlib
import json

import boto3

from components.data.dataset import shard_uris
from components.data.shards import ShardDataset
from components.storage import Store

from .conftest import good_photos_masks, read_rows, run_prepare


def test_prepare_on_s3(moto_endpoint, s3_bucket, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = s3_bucket.removeprefix("s3://")
    src = good_photos_masks(tmp_path / "src", 6)
    for f in sorted(src.rglob("*.*")):
        client.upload_file(str(f), bucket, f"inputs/{f.relative_to(src).as_posix()}")
    root = f"{s3_bucket}/store"
    manifest = run_prepare(
        tmp_path / "out",
        "prepare.image_size=32",
        "prepare.crops_per_photo=3",
        "prepare.composites_per_photo=2",
        f"storage.endpoint_url={moto_endpoint}",
        f"prepare.sources=[{{kind: builtin, limit: 3}}, {{kind: photos_masks, path: {s3_bucket}/inputs}}]",
        root=root,
    )
    store = Store(root, endpoint_url=moto_endpoint)
    objects = client.list_objects_v2(Bucket=bucket, Prefix="store/")["Contents"]
    keys = sorted(o["Key"] for o in objects if not o["Key"].endswith("/"))  # "/" keys: pyarrow dir markers
    listed = sorted(s["uri"].removeprefix(s3_bucket + "/") for v in manifest["shards"].values() for s in v)
    assert keys == sorted([*listed, "store/datasets/default/manifest.json"])
    assert all(k.startswith(f"store/datasets/default/{manifest['version']}/") for k in listed)
    for split, infos in manifest["shards"].items():
        assert shard_uris(store, "default", split) == [i["uri"] for i in infos]
        for info in infos:
            assert hashlib.sha256(store.read_bytes(info["uri"])).hexdigest() == info["sha256"]
    rows = read_rows(manifest, store)
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert (
        card["subsets"]["train"].get("photos_masks", 0)
        + card["subsets"]["val"].get("photos_masks", 0)
        + card["subsets"]["test"].get("photos_masks", 0)
        == sum(r["source"] == "photos_masks" for r in rows)
        > 0
    )
    ds = ShardDataset(shard_uris(store, "default", "train"), store=store)
    got = [x["sample_id"] for x in ds]
    assert sorted(got) == sorted(r["sample_id"] for r in rows if r["split"] == "train")
