"""``python -m pipeline.prepare``: make train/val/test triplet shards from the configured sources.

Heavy shards go to ``<storage.root>/datasets/<prepare.name>/`` (local or s3://); the small files DVC
tracks go to the working tree: the manifest (shard URIs, sizes, sha256), the dataset card (every
skipped input named with its reason), its headline numbers (the DVC metric) and a PNG grid of samples.
With a local ``storage.root`` the dataset folder itself is a DVC output (cached, ``dvc push``-ed).

    python -m pipeline.prepare
    python -m pipeline.prepare -S prepare.crops_per_photo=12 -S prepare.name=small
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("storage", "prepare")


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.prepare", PARAMS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    params = params_from_args(args)
    cfg = params.prepare
    from components import headline  # pyarrow, numpy, PIL: after --help
    from components.data.build import prepare_dataset
    from components.storage import Store

    store = Store.from_config(params.storage)

    def dvc_copies(result) -> None:  # under the dataset's lock: the copies are of the manifest published
        store.write_bytes(cfg.card, _json(result.card))
        headline.write(headline.path_for(cfg.card), headline.prepare(result.card), store)
        store.write_bytes(cfg.samples_png, result.grid_png)
        store.write_bytes(cfg.manifest, _json(result.manifest))

    result = prepare_dataset(cfg, store, progress=not args.no_progress, after_publish=dvc_copies)
    counts = ", ".join(f"{k} {v}" for k, v in result.card["counts"].items())
    skipped = sum(result.card["skipped"].values())
    print(
        f"prepared {cfg.name}: {counts} triplets ({skipped} inputs skipped) under "
        f"{result.manifest['dataset_dir']}; content hash {result.card['content_hash'][:12]}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
