"""The iHarmony4 folder layout, in one place: ``prepare``, ``evaluate`` and ``harmonize`` read it here.

``<subset>/composite_images/<id>_<mask>_<k>.jpg``, ``<subset>/masks/<id>_<mask>.png``,
``<subset>/real_images/<id>.jpg`` and the split lists ``<subset>_{train,test}.txt`` (one composite file
name per line, sometimes with a ``<subset>/composite_images/`` prefix). A root is one subset folder or a
folder of subset folders.
"""

from __future__ import annotations

import logging
import posixpath

from components import storage
from components.data.images import InputError
from components.storage import Store

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
COMPOSITES, MASKS, REALS = "composite_images", "masks", "real_images"


def parse_composite_name(composite_name: str) -> tuple[str, str]:
    """``<id>_<mask>_<k>.jpg`` -> (real id, mask id ``<id>_<mask>``); ``InputError`` for other names."""
    stem = posixpath.basename(composite_name).rsplit(".", 1)[0]
    parts = stem.rsplit("_", 2)
    if len(parts) != 3:
        raise InputError(f"{composite_name}: not an iHarmony4 composite name (<id>_<mask>_<k>.jpg)")
    return parts[0], f"{parts[0]}_{parts[1]}"


def mask_and_real_names(composite_name: str) -> tuple[str, str]:
    """``<id>_<mask>_<k>.jpg`` -> (``<id>_<mask>.png``, ``<id>.jpg``), the iHarmony4 naming rule."""
    real_id, mask_id = parse_composite_name(composite_name)
    return f"{mask_id}.png", f"{real_id}.jpg"


def is_subset(store: Store, folder: str) -> bool:
    return COMPOSITES in store.list_dirs(folder)


def subsets(store: Store, path: str) -> list[tuple[str, str]]:
    """``(subset name, folder)`` of an iHarmony4-layout folder: the folder itself when it holds
    ``composite_images/``, else each of its subfolders that does."""
    if is_subset(store, path):
        return [(posixpath.basename(str(path).rstrip("/")), path)]
    return [
        (name, storage.join(path, name))
        for name in store.list_dirs(path)
        if is_subset(store, storage.join(path, name))
    ]


def split_list_uri(store: Store, folder: str, subset: str, split: str, root: str | None = None) -> str | None:
    """Where ``<subset>_<split>.txt`` is: in the subset folder, else in the root; None when absent."""
    for base in (folder, root):
        if base is not None:
            uri = storage.join(base, f"{subset}_{split}.txt")
            if store.exists(uri):
                return uri
    return None


def read_split_list(store: Store, uri: str) -> list[str]:
    """Composite file names of a split list, in file order (prefixes dropped, blank lines skipped)."""
    text = store.read_bytes(uri).decode("utf-8", "replace")
    return [ln.strip().rsplit("/", 1)[-1] for ln in text.splitlines() if ln.strip()]


def composite_names(store: Store, folder: str, subset: str, split: str, root: str | None = None) -> list[str]:
    """The split's composite file names; every composite (with a warning) when there is no list."""
    uri = split_list_uri(store, folder, subset, split, root)
    if uri is not None:
        return read_split_list(store, uri)
    log.warning("%s: no %s_%s.txt; using every composite in the folder", folder, subset, split)
    files = store.list_files(storage.join(folder, COMPOSITES))
    return [posixpath.basename(f) for f in files if f.lower().endswith(IMAGE_EXTS)]


def triplet_uris(folder: str, composite_name: str) -> tuple[str, str, str]:
    """(composite, mask, real) URIs of one composite of a subset folder."""
    mask_name, real_name = mask_and_real_names(composite_name)
    return (
        storage.join(folder, COMPOSITES, composite_name),
        storage.join(folder, MASKS, mask_name),
        storage.join(folder, REALS, real_name),
    )
