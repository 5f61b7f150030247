"""The ``harmonize`` stage: one (composite, mask) pair or a folder of pairs in, harmonized images out.

``run`` takes what the command line gives (``COMPOSITE MASK`` or one ``FOLDER``). It finds pairs in the
three folder layouts, refuses outputs that would overwrite an input, writes each output to a temporary
name then renames it, and reports each skipped pair with its reason.
``pipeline/harmonize.py`` is its command line.
"""

from __future__ import annotations

import logging
import posixpath
import sys
from pathlib import Path

from components import storage, tracking
from components.config import HarmonizeConfig, Params
from components.data import iharmony4
from components.data.iharmony4 import IMAGE_EXTS
from components.data.images import InputError, encode_image
from components.errors import UserError
from components.inference.predictor import Predictor
from components.storage import Store

log = logging.getLogger("harmonize")

GROUP_PIXELS = 64_000_000  # full-resolution pixels held for one network batch when max_pixels is unset


def find_pairs(folder: str, store: Store | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(composite, mask) pairs in a folder, and (composite, reason) for composites without a mask."""
    folder = str(folder).rstrip("/")
    store = store or Store()

    def images(d: str) -> list[str]:
        return [f for f in store.list_files(d) if f.lower().endswith(IMAGE_EXTS)]

    pairs, missing = [], []
    if store.exists(storage.join(folder, iharmony4.COMPOSITES)):  # an iHarmony4 subset
        masks = set(store.list_files(storage.join(folder, iharmony4.MASKS)))
        for comp in images(storage.join(folder, iharmony4.COMPOSITES)):
            try:
                mask_name = iharmony4.mask_and_real_names(posixpath.basename(comp))[0]
                mask = storage.join(folder, iharmony4.MASKS, mask_name)
            except InputError as exc:
                missing.append((comp, str(exc)))
                continue
            (pairs.append((comp, mask)) if mask in masks else missing.append((comp, f"no mask {mask}")))
        return pairs, missing
    for sub in ("images", "composites"):
        if store.exists(storage.join(folder, sub)) and store.exists(storage.join(folder, "masks")):
            masks = {_stem(m): m for m in images(storage.join(folder, "masks"))}
            for comp in images(storage.join(folder, sub)):
                m = masks.get(_stem(comp))
                (
                    pairs.append((comp, m))
                    if m
                    else missing.append((comp, f"no mask named {_stem(comp)}.* in masks/"))
                )
            return pairs, missing
    files = images(folder)
    masks = {_stem(f)[: -len("_mask")]: f for f in files if _stem(f).endswith("_mask")}
    for comp in files:
        if _stem(comp).endswith("_mask"):
            continue
        m = masks.get(_stem(comp))
        (
            pairs.append((comp, m))
            if m
            else missing.append((comp, f"no mask {_stem(comp)}_mask.png beside it"))
        )
    return pairs, missing


def unique_targets(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Keep one composite per output name (``<stem>.png``); the others are skipped, never overwritten."""
    seen: dict[str, str] = {}
    keep, clashes = [], []
    for comp, mask in pairs:
        first = seen.setdefault(_stem(comp), comp)
        if first == comp:
            keep.append((comp, mask))
        else:
            clashes.append((comp, f"same output name {_stem(comp)}.png as {first}; rename one of them"))
    return keep, clashes


def warn_if_lossy(path: str) -> None:
    if path.lower().endswith((".jpg", ".jpeg")):
        log.warning("%s: JPEG is lossy, so background pixels will not be byte-identical; use .png", path)


def _stem(path: str) -> str:
    return posixpath.basename(path).rsplit(".", 1)[0]


def refuse_existing(targets: list[str], output: str, store: Store) -> None:
    """``UserError`` naming the outputs that already exist (``--overwrite`` replaces them)."""
    there = [t for t in targets if store.exists(t)]
    if there:
        more = f" and {len(there) - 1} more" if len(there) > 1 else ""
        raise UserError(
            f"-o {output}: {there[0]}{more} already exist{'s' if len(there) == 1 else ''}; "
            "pass --overwrite to replace, or choose another output"
        )


def harmonize_pair(
    comp: str,
    mask: str,
    output: str,
    cfg: HarmonizeConfig,
    tracking_uri: str | None = None,
    overwrite: bool = False,
) -> int:
    """One pair into the image file ``output``; ``UserError`` (and nothing written) on bad input or an
    existing ``output`` (unless ``overwrite``). Local paths, and ``s3://`` through the AWS environment
    (``Store()``)."""
    store = Store()
    for p in (comp, mask):
        if not storage.is_s3(p) and not Path(p).is_file():
            raise UserError(f"{p}: file not found")
    if not storage.is_s3(output) and Path(output).is_dir():
        raise UserError(f"-o {output}: is a folder; give the output image's file name")
    if Path(output).resolve() in (Path(comp).resolve(), Path(mask).resolve()):
        raise UserError(f"-o {output}: would overwrite an input; choose another file name")
    if not overwrite:
        refuse_existing([output], output, store)
    warn_if_lossy(output)
    harmonizer = load(cfg, tracking_uri)
    try:
        out = harmonizer.harmonize_files(comp, mask, store)
        data = encode_image(out, output)
    except InputError as exc:
        raise UserError(str(exc)) from None
    store.write_bytes(output, data)
    log.info("wrote %s (%dx%d)", output, out.shape[1], out.shape[0])
    return 0


def harmonize_folder(
    folder: str, output: str, cfg: HarmonizeConfig, tracking_uri: str | None = None, overwrite: bool = False
) -> int:
    """Every pair in ``folder`` into the folder ``output``; 1 when some pairs were skipped (each is
    reported on stderr with its reason), 0 when all were written. Outputs that already exist are refused
    before anything is written (``UserError``) unless ``overwrite``."""
    store = Store()
    if not storage.is_s3(folder) and not Path(folder).is_dir():
        raise UserError(f"{folder}: not a folder (give COMPOSITE MASK for a single image)")
    if not storage.is_s3(output):
        out_dir = Path(output)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"-o {output}: is a file; batch mode writes into a folder")
        if out_dir.resolve() == Path(folder).resolve():
            raise UserError(f"-o {output}: is the input folder; the outputs would overwrite composites")
    pairs, skipped = find_pairs(folder, store)
    if not pairs:
        raise UserError(
            f"{folder}: no (composite, mask) pairs found; {len(skipped)} composite(s) without a mask"
        )
    pairs, clashes = unique_targets(pairs)
    skipped += clashes
    if not overwrite:
        refuse_existing([storage.join(output, _stem(c) + ".png") for c, _ in pairs], output, store)
    harmonizer = load(cfg, tracking_uri)
    from tqdm import tqdm

    written = 0
    with tqdm(total=len(pairs), desc="harmonize", unit="img") as bar:
        for group in _groups(harmonizer, pairs, store, skipped, bar):
            for ((comp, _), _), (out, _) in zip(group, harmonizer.finish([p for _, p in group]), strict=True):
                target = storage.join(output, _stem(comp) + ".png")
                store.write_bytes(target, encode_image(out, target))
                written += 1
            bar.update(len(group))
    for comp, reason in skipped:
        print(f"skipped {comp}: {reason}", file=sys.stderr)
    print(f"harmonized {written} of {written + len(skipped)} composites into {output}", file=sys.stderr)
    return 1 if skipped else 0


def _groups(harmonizer: Predictor, pairs, store: Store, skipped: list, bar):
    """Read and check the pairs; yield groups of ``(pair, Prepared)`` for one network batch each: at most
    ``batch_size`` pairs and ``max_pixels`` full-resolution pixels together (memory stays that of one
    large image). A bad pair is skipped with its reason, and the others go on."""
    group, pixels = [], 0
    budget = harmonizer.max_pixels or GROUP_PIXELS
    for comp, mask in pairs:
        try:
            image, alpha = harmonizer.read_pair(comp, mask, store)
            prepared = harmonizer.prepare(image, alpha, name=comp)
        except InputError as exc:
            skipped.append((comp, str(exc)))
            bar.update(1)
            continue
        n = image.shape[0] * image.shape[1]
        if group and (len(group) >= harmonizer.batch_size or pixels + n > budget):
            yield group
            group, pixels = [], 0
        group.append(((comp, mask), prepared))
        pixels += n
    if group:
        yield group


def load(cfg: HarmonizeConfig, tracking_uri: str | None = None) -> Predictor:
    """The predictor for ``cfg.model``; a ``runs:/`` or ``models:/`` model is read from an existing
    MLflow store (``tracking_uri``, ``MLFLOW_TRACKING_URI`` or the project's), never a new empty one."""
    from components.checkpoint import CheckpointError, is_mlflow_uri

    if is_mlflow_uri(cfg.model):
        try:
            tracking.configure_reader(tracking_uri)
        except LookupError as exc:
            raise UserError(f"model {cfg.model}: {exc}") from None
    try:
        return Predictor.from_uri(
            cfg.model, device=cfg.device, mapping=cfg.mapping, max_pixels=cfg.max_pixels,
            batch_size=cfg.batch_size,
        )
    except CheckpointError as exc:
        raise UserError(f"model {cfg.model}: {exc}{tracking.store_note(cfg.model)}") from None


def run(
    params: Params, inputs: list[str], output: str, tracking_uri: str | None = None, overwrite: bool = False
) -> int:
    """``inputs`` is ``[COMPOSITE, MASK]`` (one image into the file ``output``) or ``[FOLDER]`` (every pair
    into the folder ``output``); the exit status: 0 all written, 1 some pairs skipped (batch mode)."""
    from components.inference.predictor import MAPPINGS

    cfg = params.harmonize
    if len(inputs) not in (1, 2):
        raise UserError("give COMPOSITE MASK (one image) or one FOLDER (batch mode)")
    if cfg.mapping not in MAPPINGS:
        raise UserError(f"harmonize.mapping={cfg.mapping!r}: expected one of {list(MAPPINGS)}")
    if len(inputs) == 2:
        return harmonize_pair(*inputs, output, cfg, tracking_uri, overwrite=overwrite)
    return harmonize_folder(inputs[0], output, cfg, tracking_uri, overwrite=overwrite)
