"""``python -m pipeline.prepare``: make train/val/test triplet shards from the configured sources.

Heavy shards go to ``<storage.root>/datasets/<prepare.name>/`` (local or s3://); the small files DVC
tracks go to the working tree: the manifest (shard URIs, sizes, sha256), the dataset card (every
skipped input named with its reason), its headline numbers (the DVC metric) and a PNG grid of samples.
With a local ``storage.root`` the dataset folder itself is a DVC output (cached, ``dvc push``-ed).

    python -m pipeline.prepare
    python -m pipeline.prepare -S prepare.crops_per_photo=12 -S prepare.name=small
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("storage", "prepare")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.prepare", PARAMS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    params = params_from_args(args)
    from components.stages import prepare  # pyarrow, numpy, PIL: after --help

    result = prepare.run(params, progress=not args.no_progress)
    counts = ", ".join(f"{k} {v}" for k, v in result.card["counts"].items())
    skipped = sum(result.card["skipped"].values())
    print(
        f"prepared {params.prepare.name}: {counts} triplets ({skipped} inputs skipped) under "
        f"{result.manifest['dataset_dir']}; content hash {result.card['content_hash'][:12]}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
