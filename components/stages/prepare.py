"""The ``prepare`` stage: build the dataset (``components/data/build.py``), then the small files DVC tracks.

The shards go to ``<storage.root>/datasets/<prepare.name>/``; the manifest, the dataset card, its
headline numbers and the samples grid are written under the dataset's lock, so they are copies of the
manifest just published."""

from __future__ import annotations

import json

from components import headline
from components.config import Params
from components.data.build import PrepareResult, prepare_dataset
from components.storage import Store


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def run(params: Params, progress: bool = True) -> PrepareResult:
    """Prepare ``params.prepare`` into ``params.storage``; returns the card and manifest written."""
    cfg = params.prepare
    store = Store.from_config(params.storage)

    def dvc_copies(result: PrepareResult) -> None:  # under the dataset's lock
        store.write_bytes(cfg.card, _json(result.card))
        headline.write(headline.path_for(cfg.card), headline.prepare(result.card), store)
        store.write_bytes(cfg.samples_png, result.grid_png)
        store.write_bytes(cfg.manifest, _json(result.manifest))

    return prepare_dataset(cfg, store, progress=progress, after_publish=dvc_copies)
