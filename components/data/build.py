"""``prepare`` end to end: list sources, make masks, synthesize composites, write shards, describe them.

Train and val triplets are square, ``image_size`` x ``image_size`` (what training reads). Test triplets
keep the source's native size (a builtin crop's size before resizing), downscaled with the aspect ratio
kept only when the longer side exceeds ``test_max_side``; their composites are synthesized at that size,
with ``methods`` plus ``holdout_methods`` (methods train and val never see).

Work is split into items (a crop, a photo, a composite), each with its own random generator seeded
from ``(seed, item id)``; results are consumed in task order, so the shards are byte-identical for the
same params whatever ``processes`` is.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from components.config import PrepareConfig
from components.data import images, masks, synthesis
from components.data.card import CardBuilder
from components.data.dataset import DatasetWriter
from components.data.grid import sample_grid
from components.data.images import BadInput
from components.data.lock import DatasetLock
from components.data.sources import (
    SPLITS,
    Entry,
    Skip,
    SourceListing,
    add_extra_masks,
    assign_splits,
    builtin_photo,
    list_builtin,
    list_iharmony4,
    list_photos_masks,
    rng_for,
)
from components.errors import UserError
from components.storage import Store

log = logging.getLogger("prepare")
N_REFERENCES = 8  # candidate reference objects sent with each composite task
GRID_PER_SPLIT = 4


@dataclass
class Base:
    """A real image at its split's size with its object mask (before synthesis)."""

    entry: Entry
    real: np.ndarray
    mask: np.ndarray
    stats: synthesis.ObjectStats


@dataclass
class Outcome:
    value: object = None  # Base or row dict
    skip: Skip | None = None
    notes: tuple = ()


@dataclass
class PrepareResult:
    card: dict
    manifest: dict
    grid_png: bytes


# --------------------------------------------------------------------------------------------------
# per-item work (runs in worker processes)
# --------------------------------------------------------------------------------------------------


def _resizers(split: str, opt: dict) -> tuple[Callable, Callable]:
    """(image, mask) resizers of a split: square ``image_size`` for train / val; for test the native
    size, downscaled (aspect ratio kept) when the longer side exceeds ``test_max_side``."""
    if split == "test":
        side = opt["test_max_side"]

        def fit(a: np.ndarray) -> tuple[int, int]:
            return images.fit_within(a.shape[1], a.shape[0], side)

        return (lambda a: images.resize_image(a, fit(a))), (lambda m: images.resize_mask(m, fit(m)))
    size = opt["image_size"]
    return (lambda a: images.resize_image(a, size)), (lambda m: images.resize_mask(m, size))


def _load_base(task: tuple[str, Entry, dict, dict]) -> Outcome:
    _, entry, blobs, opt = task
    resize_image, resize_mask = _resizers(entry.split, opt)
    notes: list = []
    px = opt["max_pixels"]
    try:
        if entry.kind == "builtin":
            y0, y1, x0, x1 = entry.payload["box"]
            real = resize_image(builtin_photo(entry.payload["photo"])[y0:y1, x0:x1])
            mask = masks.object_mask(real, rng_for(opt["seed"], "mask", entry.key), *opt["fg_ratio"])
            if mask is None:
                return Outcome(skip=Skip("no_object_mask", entry.key, "no object-like mask in the area band"))
        elif "extra_mask" in entry.payload:  # photos_masks, train: a mask grown from the photo itself
            # conversions of the photo are noted once, by its hand-drawn-mask entry
            real = resize_image(images.decode_image(blobs["photo"], entry.payload["photo"], [], px))
            rng = rng_for(opt["seed"], "extra_mask", entry.key, entry.payload["extra_mask"])
            mask = masks.object_mask(real, rng, *opt["fg_ratio"])
            if mask is None:
                return Outcome(skip=Skip("no_object_mask", entry.key, "no object-like mask in the area band"))
        else:
            photo = images.decode_image(blobs["photo"], entry.payload["photo"], notes, px)
            mask = images.decode_mask(blobs["mask"], entry.payload["mask"], notes, max_pixels=px)
            images.check_same_size(photo, mask, entry.payload["photo"], entry.payload["mask"])
            real, mask = resize_image(photo), resize_mask(mask)
            if not mask.any() or mask.all():
                raise BadInput(
                    "mask_empty" if not mask.any() else "mask_full", entry.payload["mask"], "after resize"
                )
    except BadInput as exc:
        return Outcome(skip=Skip(exc.reason, exc.name, exc.detail), notes=tuple(notes))
    stats = synthesis.object_stats(real, mask, entry.scene_id, rng_for(opt["seed"], "stats", entry.key))
    return Outcome(Base(entry, real, mask, stats), notes=tuple(notes))


def _row(
    entry: Entry, sample_id: str, method: str, comp, mask, real, mse: float, strength: float | None = None
) -> dict:
    return {
        "sample_id": sample_id,
        "scene_id": entry.scene_id,
        "subset": entry.subset,
        "split": entry.split,
        "source": entry.kind,
        "method": method,
        "composite": images.encode_png(comp),
        "mask": images.encode_png(mask),
        "real": images.encode_png(real),
        "height": int(real.shape[0]),
        "width": int(real.shape[1]),
        "fg_ratio": float(mask.mean()),
        "fg_mse": float(mse),
        "strength": None if strength is None else float(strength),
    }


def _make_row(task: tuple) -> Outcome:
    if task[0] == "synth":
        _, base, k, refs, opt = task
        sample_id = f"{base.entry.key}_{k}"
        rng = rng_for(opt["seed"], "synth", sample_id)
        methods = opt["methods"] + (opt["holdout_methods"] if base.entry.split == "test" else [])
        out = synthesis.synthesize(base.real, base.mask, refs, methods, rng, opt["fg_mse"])
        if out is None:
            return Outcome(skip=Skip("fg_mse_out_of_band", sample_id, "no composite within the fg MSE band"))
        comp, method, mse, strength = out
        return Outcome(_row(base.entry, sample_id, method, comp, base.mask, base.real, mse, strength))
    _, entry, blobs, opt = task
    p, notes, px = entry.payload, [], opt["max_pixels"]
    resize_image, resize_mask = _resizers(entry.split, opt)
    try:
        comp = images.decode_image(blobs["composite"], p["composite"], notes, px)
        real = images.decode_image(blobs["real"], p["real"], notes, px)
        mask = images.decode_mask(blobs["mask"], p["mask"], notes, max_pixels=px)
        if comp.shape != real.shape:
            raise BadInput("size_mismatch", p["composite"], f"composite vs real {p['real']}")
        images.check_same_size(real, mask, p["real"], p["mask"])
        comp, real, mask = resize_image(comp), resize_image(real), resize_mask(mask)
        if not mask.any() or mask.all():
            raise BadInput("mask_empty" if not mask.any() else "mask_full", p["mask"], "after resize")
    except BadInput as exc:
        return Outcome(skip=Skip(exc.reason, exc.name, exc.detail), notes=tuple(notes))
    mse = synthesis.fg_mse(comp, real, mask)
    return Outcome(
        _row(entry, entry.key, p.get("method", "unknown"), comp, mask, real, mse), notes=tuple(notes)
    )


# --------------------------------------------------------------------------------------------------
# orchestration (main process)
# --------------------------------------------------------------------------------------------------


@contextmanager
def _mapper(processes: int) -> Iterator[Callable]:
    if processes <= 1:
        yield map
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(processes) as pool:
        yield lambda f, it: pool.imap(f, it, chunksize=4)


def _with_bytes(tasks: Iterable[tuple], store: Store) -> Iterator[tuple]:
    """Fill each task's files just before it is handed out (I/O stays in the main process).

    Tasks that read files are ``(tag, entry, blobs, opt)`` with ``blobs`` an empty dict to fill.
    """
    for task in tasks:
        if task[0] in ("base", "ih") and task[1].kind != "builtin":
            for role in ("photo", "mask", "composite", "real"):
                if role in task[1].payload:
                    try:
                        task[2][role] = store.read_bytes(task[1].payload[role])
                    except OSError:
                        task[2][role] = b""  # decoded later as "unreadable", with the file named
        yield task


def _list_sources(cfg: PrepareConfig, store: Store) -> list[SourceListing]:
    out = []
    for i, src in enumerate(cfg.sources):
        subset = src.subset or src.kind
        try:
            if src.kind == "builtin":
                listing = list_builtin(subset, src.limit, cfg.crops_per_photo, cfg.seed)
            elif src.kind in ("photos_masks", "iharmony4"):
                if not src.path:
                    raise UserError(f"prepare.sources[{i}] ({src.kind}): 'path' is required")
                if src.kind == "photos_masks":
                    listing = list_photos_masks(store, src.path, subset, src.limit)
                else:
                    listing = list_iharmony4(store, src.path, src.subset, src.limit)
            else:
                raise UserError(
                    f"prepare.sources[{i}]: unknown kind {src.kind!r}; use builtin, photos_masks or iharmony4"
                )
        except (FileNotFoundError, OSError) as exc:
            raise UserError(f"prepare.sources[{i}] ({src.kind}): {exc}") from None
        assign_splits(listing.entries, cfg.val_fraction, cfg.test_fraction)
        if src.extra_masks:
            if src.kind != "photos_masks" or src.extra_masks < 0:
                raise UserError(
                    f"prepare.sources[{i}] ({src.kind}): extra_masks is for photos_masks sources, >= 0"
                )
            add_extra_masks(listing, src.extra_masks)
        out.append(listing)
    return out


def _check_config(cfg: PrepareConfig) -> None:
    known = list(synthesis.METHODS)
    unknown = sorted(set(cfg.methods) - set(known))
    if unknown or not cfg.methods:
        raise UserError(f"prepare.methods: unknown {unknown or 'empty list'}; known: {known}")
    unknown = sorted(set(cfg.holdout_methods) - set(known))
    if unknown:
        raise UserError(f"prepare.holdout_methods: unknown {unknown}; known: {known}")
    both = sorted(set(cfg.methods) & set(cfg.holdout_methods))
    if both:
        raise UserError(
            f"prepare.holdout_methods: {both} also in prepare.methods; a held-out method is used for the "
            "test split only, never for train / val"
        )
    if cfg.image_size < 8:
        raise UserError(f"prepare.image_size: {cfg.image_size} is too small (>= 8)")
    if cfg.test_max_side is not None and cfg.test_max_side < 8:
        raise UserError(f"prepare.test_max_side: {cfg.test_max_side} is too small (>= 8, or null: no cap)")
    if not (cfg.val_fraction >= 0 and cfg.test_fraction >= 0 and cfg.val_fraction + cfg.test_fraction < 1):
        raise UserError("prepare.val_fraction + test_fraction must be in [0, 1)")
    if not 0 < cfg.fg_ratio_min < cfg.fg_ratio_max < 1:
        raise UserError("prepare.fg_ratio_min/max: need 0 < min < max < 1")
    if not 0 <= cfg.fg_mse_min < cfg.fg_mse_max:
        raise UserError("prepare.fg_mse_min/max: need 0 <= min < max")
    if cfg.rows_per_shard < 1 or cfg.rows_per_row_group < 1:
        raise UserError("prepare.rows_per_shard and rows_per_row_group must be >= 1")


def _references(pool: list[synthesis.ObjectStats], scene: str, rng) -> list[synthesis.ObjectStats]:
    """Reference objects from *other* photos (a colour transfer from the same scene teaches nothing)."""
    others = [i for i, s in enumerate(pool) if s.scene_id != scene]
    if not others:
        return []
    pick = rng.choice(len(others), size=min(N_REFERENCES, len(others)), replace=False)
    return [pool[others[int(i)]] for i in pick]


def prepare_dataset(
    cfg: PrepareConfig,
    store: Store,
    progress: bool = True,
    after_publish: Callable[[PrepareResult], None] | None = None,
) -> PrepareResult:
    """Write a new version of ``<store root>/datasets/<name>/`` and publish it (its manifest is written
    last, in one step: an interrupted run leaves the previous dataset whole); return the card, the
    manifest and the sample grid. Sources are read through the same store.

    Before any source is read, the root is checked (write, list, delete) and the dataset's lock taken
    (``components.data.lock``): a second run on the same dataset fails at once. ``after_publish``
    (the stage's DVC copies) runs while the lock is still held, so the copies are of the manifest
    that was published. A run that fails removes its own unpublished version, nothing else."""
    _check_config(cfg)
    store.check_writable(store.uri("datasets"))
    with DatasetLock(store, cfg.name) as lock:
        writer = DatasetWriter(
            store, cfg.name, cfg.rows_per_shard, cfg.rows_per_row_group, int(cfg.shard_max_mb * 2**20)
        )
        writer.cleanup_before()
        try:
            result = _build(cfg, store, writer, lock, progress)
        except OSError as exc:  # a full disk, a lost S3 server: said in one line, the own version removed
            writer.discard()
            raise UserError(f"prepare: writing {writer.folder} failed ({exc}); nothing was published") from None
        except BaseException:
            writer.discard()
            raise
        if after_publish is not None:
            after_publish(result)
        return result


def _build(cfg: PrepareConfig, store: Store, writer: DatasetWriter, lock: DatasetLock, progress: bool):
    listings = _list_sources(cfg, store)
    entries = [e for lst in listings for e in lst.entries]
    dupes = [k for k, n in Counter(e.key for e in entries).items() if n > 1]
    if dupes:
        raise UserError(
            f"prepare.sources: two sources give the same sample ids (e.g. {dupes[0]}); set 'subset'"
        )
    skipped: Counter = Counter()
    converted: Counter = Counter()
    skipped_inputs: list[dict] = []  # the detail goes to the card; the log gets one summary line

    def record(outcome: Outcome) -> None:
        for reason, name in outcome.notes:
            converted[reason] += 1
            log.debug("converted %s: %s", name, reason)
        if outcome.skip:
            s = outcome.skip
            skipped[s.reason] += 1
            skipped_inputs.append({"input": s.name, "reason": s.reason, "detail": s.detail or ""})
            log.debug("skipped %s: %s%s", s.name, s.reason, f" ({s.detail})" if s.detail else "")

    for lst in listings:
        for s in lst.skipped:
            record(Outcome(skip=s))

    opt = {
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "fg_ratio": (cfg.fg_ratio_min, cfg.fg_ratio_max),
        "methods": list(cfg.methods),
        "holdout_methods": list(cfg.holdout_methods),
        "test_max_side": cfg.test_max_side,
        "fg_mse": (cfg.fg_mse_min, cfg.fg_mse_max),
        "max_pixels": cfg.max_pixels,
    }
    base_entries = [e for e in entries if e.kind != "iharmony4"]
    card, grid_rows = CardBuilder(), []
    with _mapper(cfg.processes) as imap:
        bases: list[Base] = []
        tasks = _with_bytes((("base", e, {}, opt) for e in base_entries), store)
        for outcome in tqdm(
            imap(_load_base, tasks), total=len(base_entries), desc="masks", disable=not progress
        ):
            record(outcome)
            if outcome.value is not None:
                bases.append(outcome.value)
        # reference objects: the sources' own objects only (no extra masks), so val / test composites
        # are the same whatever extra_masks is
        pool = [b.stats for b in bases if "extra_mask" not in b.entry.payload]
        for split in SPLITS:
            synth = [
                (b, k)
                for b in bases
                if b.entry.split == split
                for k in range(1, cfg.composites_per_photo + 1)
            ]
            ih = [e for e in entries if e.kind == "iharmony4" and e.split == split]
            order = rng_for(cfg.seed, "order", split).permutation(len(synth) + len(ih))
            work = [("synth", *synth[i]) if i < len(synth) else ("ih", ih[i - len(synth)]) for i in order]

            def tasks_for(work=work):
                for item in work:
                    if item[0] == "synth":
                        _, b, k = item
                        refs = _references(pool, b.entry.scene_id, rng_for(cfg.seed, "refs", b.entry.key, k))
                        yield ("synth", b, k, refs, opt)
                    else:
                        yield ("ih", item[1], {}, opt)

            results = imap(_make_row, _with_bytes(tasks_for(), store))
            for outcome in tqdm(results, total=len(work), desc=f"composites {split}", disable=not progress):
                record(outcome)
                if outcome.value is not None:
                    writer.add(outcome.value)
                    card.add(outcome.value)
                    if sum(r["split"] == split for r in grid_rows) < GRID_PER_SPLIT:
                        grid_rows.append(outcome.value)
            writer.end_split(split)  # its last shard now, not buffered while the next splits fill
    if card.splits.total() == 0:
        raise UserError(
            f"prepare: nothing usable left from {len(cfg.sources)} source(s); skipped by reason: {dict(skipped)}"
        )
    for split in SPLITS:
        if card.splits[split] == 0:
            log.warning("split %s is empty", split)
    card_dict = card.build(
        name=cfg.name,
        seed=cfg.seed,
        image_size=cfg.image_size,
        test_max_side=cfg.test_max_side,
        sources=[lst.description for lst in listings],
        split_rule=(
            "by scene: scenes of a source ordered by sha256(scene_id); sources with >= 20 scenes: "
            f"test if u < {cfg.test_fraction}, val if u < {cfg.test_fraction + cfg.val_fraction}, else train; "
            "fewer scenes: counted out (>= 1 val and test scene when >= 3 scenes); iHarmony4 list files win"
        ),
        synthesis={
            k: v
            for k, v in asdict(cfg).items()
            if k
            in (
                "methods",
                "holdout_methods",
                "fg_mse_min",
                "fg_mse_max",
                "fg_ratio_min",
                "fg_ratio_max",
                "crops_per_photo",
                "composites_per_photo",
            )
        },  # fmt: skip
        skipped=dict(sorted(skipped.items())),
        converted=dict(sorted(converted.items())),
    )
    card_dict["skipped_inputs"] = skipped_inputs
    if skipped:
        log.info(
            "skipped %d inputs (expected: %s); each is listed in %s (skipped_inputs)",
            sum(skipped.values()), ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())), cfg.card,
        )  # fmt: skip
    manifest = writer.publish(  # the one step that makes the new version the dataset
        card_dict["content_hash"], cfg.image_size, lock, test_max_side=cfg.test_max_side, card=cfg.card
    )
    grid_rows.sort(key=lambda r: SPLITS.index(r["split"]))
    return PrepareResult(card_dict, manifest, sample_grid(grid_rows))
