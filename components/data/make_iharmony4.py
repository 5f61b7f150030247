"""An iHarmony4-layout folder of any size, made from the builtin photos: data at the dataset's scale for
benchmarks and tests, with no download.

``<out>/<subset>/real_images/<id>.jpg``, ``masks/<id>_<m>.png``, ``composite_images/<id>_<m>_<k>.jpg``
and ``<subset>_train.txt`` / ``<subset>_test.txt`` (the names and rules of ``components/data/iharmony4.py``).
Each real image is a random crop of a builtin photo (longer side ``size``, aspect 3:4 to 4:3); each has
``masks_per_real`` object-like masks grown from the crop (``components/data/masks.py``) and each mask
``composites_per_mask`` composites recoloured by ``components/data/synthesis.py`` with references from
other photos. A real image and all its composites go to one split (by a hash of its id, as iHarmony4
keeps a real's composites together). Everything is seeded per item: the same arguments give the same
files whatever ``processes`` is.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from components import storage
from components.data import iharmony4, images, masks, synthesis
from components.data.sources import BUILTIN_PHOTOS, builtin_photo, rng_for, stable_unit
from components.storage import Store

FG_RATIO = (0.05, 0.4)
FG_MSE_BAND = (10.0, 2500.0)  # prepare's default rejection band
JPEG_QUALITY = 90
METHODS = list(synthesis.METHODS)


@dataclass(frozen=True)
class Plan:
    out: str
    subset: str
    size: int
    masks_per_real: int
    composites_per_mask: int
    test_fraction: float
    seed: int


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _real(plan: Plan, index: int) -> tuple[str, str, np.ndarray]:
    """(real id, photo name, crop at its size) of the ``index``-th real image."""
    names = list(BUILTIN_PHOTOS)
    photo = names[index % len(names)]
    rng = rng_for(plan.seed, "ih4-real", index)
    img = builtin_photo(photo)
    h, w = img.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))  # width / height
    side = min(h, w) * rng.uniform(0.45, 1.0)
    ch, cw = int(min(h, side)), int(min(w, side * aspect))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    size = images.fit_within(cw, ch, plan.size) if max(cw, ch) > plan.size else (cw, ch)
    return f"{photo.replace('_', '-')}-{index:06d}", photo, images.resize_image(crop, size)


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random blob (the fallback when no object-like mask is found): always non-empty."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 8)
    mask = field >= np.quantile(field, 1 - rng.uniform(*FG_RATIO))
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
    return mask


def _mask(real: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An object-like mask grown on a 64-px copy (segmentation costs ~20x less there), brought back to
    the real's size; a blob when no object-like mask is found."""
    h, w = real.shape[:2]
    small = images.resize_image(real, images.fit_within(w, h, 64))
    m = masks.object_mask(small, rng, *FG_RATIO)
    if m is None:
        return _blob((h, w), rng)
    return images.resize_mask(m, (w, h))


def reference_pool(seed: int) -> list[synthesis.ObjectStats]:
    """One object per builtin photo, the references of colour transfers (scene = the photo)."""
    pool = []
    for photo in BUILTIN_PHOTOS:
        img = builtin_photo(photo)
        small = images.resize_image(img, images.fit_within(img.shape[1], img.shape[0], 96))
        rng = rng_for(seed, "ih4-ref", photo)
        m = masks.object_mask(small, rng, *FG_RATIO)
        m = _blob(small.shape[:2], rng) if m is None else m
        pool.append(synthesis.object_stats(small, m, photo, rng))
    return pool


_POOL: list[synthesis.ObjectStats] = []  # set before the workers fork


def _write_real(task: tuple[Plan, Store, int, int]) -> list[tuple[str, str]]:
    """Write one real image, its masks and ``n`` composites; ``[(composite file name, split)]``."""
    plan, store, index, n = task
    rid, photo, real = _real(plan, index)
    folder = storage.join(plan.out, plan.subset)
    # a hash of its own: prepare carves val out of the train list by stable_unit(<subset>/<id>), and the
    # same draw here would leave no train scene below val_fraction
    split = "test" if stable_unit(f"make_iharmony4-test/{rid}") < plan.test_fraction else "train"
    store.write_bytes(storage.join(folder, iharmony4.REALS, f"{rid}.jpg"), _jpeg(real))
    refs = [s for s in _POOL if s.scene_id != photo]
    out: list[tuple[str, str]] = []
    for m in range(1, plan.masks_per_real + 1):
        if len(out) >= n:
            break
        rng = rng_for(plan.seed, "ih4-mask", rid, m)
        mask = _mask(real, rng)
        store.write_bytes(storage.join(folder, iharmony4.MASKS, f"{rid}_{m}.png"), images.encode_png(mask))
        for k in range(1, plan.composites_per_mask + 1):
            if len(out) >= n:
                break
            crng = rng_for(plan.seed, "ih4-comp", rid, m, k)
            made = synthesis.synthesize(real, mask, refs, METHODS, crng, FG_MSE_BAND)
            comp = made[0] if made is not None else synthesis.apply("retouch", real, mask, None, crng)
            name = f"{rid}_{m}_{k}.jpg"
            store.write_bytes(storage.join(folder, iharmony4.COMPOSITES, name), _jpeg(comp))
            out.append((name, split))
    return out


def _tasks(plan: Plan, store: Store, count: int) -> Iterator[tuple[Plan, Store, int, int]]:
    per_real = plan.masks_per_real * plan.composites_per_mask
    for index in range(math.ceil(count / per_real)):
        yield plan, store, index, min(per_real, count - index * per_real)


def make_iharmony4(
    out: str,
    count: int,
    size: int = 256,
    subset: str = "HSynth",
    masks_per_real: int = 2,
    composites_per_mask: int = 2,
    test_fraction: float = 0.1,
    seed: int = 0,
    processes: int = 1,
    store: Store | None = None,
) -> dict:
    """Write ``count`` composites (with their masks, reals and split lists) under ``out/<subset>``;
    return what was written (counts per split, reals, masks)."""
    if count < 1 or size < 16 or masks_per_real < 1 or composites_per_mask < 1:
        raise ValueError(
            "make_iharmony4: count >= 1, size >= 16, masks_per_real and composites_per_mask >= 1"
        )
    if not 0 <= test_fraction < 1:
        raise ValueError(f"make_iharmony4: test_fraction {test_fraction} outside [0, 1)")
    store = store or Store()
    plan = Plan(str(out), subset, size, masks_per_real, composites_per_mask, test_fraction, seed)
    _POOL[:] = reference_pool(seed)
    written: list[tuple[str, str]] = []
    tasks = _tasks(plan, store, count)
    if processes <= 1:
        for names in map(_write_real, tasks):
            written += names
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(processes) as pool:
            for names in pool.imap(_write_real, tasks, chunksize=8):
                written += names
    folder = storage.join(plan.out, subset)
    for split in ("train", "test"):
        lines = "".join(f"{name}\n" for name, s in written if s == split)
        store.write_bytes(storage.join(folder, f"{subset}_{split}.txt"), lines.encode())
    per_real = masks_per_real * composites_per_mask
    return {
        "path": folder,
        "subset": subset,
        "composites": len(written),
        "train": sum(s == "train" for _, s in written),
        "test": sum(s == "test" for _, s in written),
        "reals": math.ceil(count / per_real),
        "masks": sum(1 for name, _ in written if name.endswith("_1.jpg")),
        "size": size,
    }
