"""``harmonize``: harmonize one composite, or a folder of (composite, mask) pairs, at any resolution.

    harmonize composite.jpg mask.png -o out.png [--model models:/rainnet@champion]
    harmonize photos/ -o harmonized/          # pairs: <name>.jpg + <name>_mask.png, or images/ + masks/,
                                              # or an iHarmony4 subset (composite_images/ + masks/)

The network runs at its training size; its colour transform (``affine`` / ``pct`` heads), or a colour
mapping fitted to its output (``image`` head), carries the result to full resolution
(``components.predictor``), so the background stays pixel-identical and the foreground sharp.
Exit status: 0 all written; 2 bad input or params (one image: nothing written); 1 batch mode skipped
some pairs (every good pair is still written, each bad one reported on stderr with its reason).
Outputs are written to a temporary name and renamed, so no half-written image is ever left behind.
"""

from __future__ import annotations

import logging
import posixpath
import sys
from collections.abc import Sequence
from pathlib import Path

from components import storage
from components.cli import UserError, base_parser, run_cli
from components.config import Params, load_params, params_from_dict
from components.data.iharmony4 import IMAGE_EXTS, mask_and_real_names
from components.data.images import InputError, encode_image
from components.predictor import MAPPINGS, Predictor

log = logging.getLogger("harmonize")


def find_pairs(folder: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(composite, mask) pairs in a folder, and (composite, reason) for composites without a mask."""
    folder = str(folder).rstrip("/")

    def images(d: str) -> list[str]:
        return [f for f in storage.list_files(d) if f.lower().endswith(IMAGE_EXTS)]

    pairs, missing = [], []
    if storage.exists(storage.join(folder, "composite_images")):  # iHarmony4 subset
        masks = set(storage.list_files(storage.join(folder, "masks")))
        for comp in images(storage.join(folder, "composite_images")):
            try:
                mask = storage.join(folder, "masks", mask_and_real_names(posixpath.basename(comp))[0])
            except InputError as exc:
                missing.append((comp, str(exc)))
                continue
            (pairs.append((comp, mask)) if mask in masks else missing.append((comp, f"no mask {mask}")))
        return pairs, missing
    for sub in ("images", "composites"):
        if storage.exists(storage.join(folder, sub)) and storage.exists(storage.join(folder, "masks")):
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


def _unique_targets(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
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


def _warn_if_lossy(path: str) -> None:
    if path.lower().endswith((".jpg", ".jpeg")):
        log.warning("%s: JPEG is lossy, so background pixels will not be byte-identical; use .png", path)


def _stem(path: str) -> str:
    return posixpath.basename(path).rsplit(".", 1)[0]


def load_cli_params(args) -> Params:
    """params.yaml when present; anyone with only a model file gets the defaults (plus ``-S`` overrides)."""
    if args.params == "params.yaml" and not Path("params.yaml").is_file() and not args.profile:
        return params_from_dict({}, args.overrides)
    return load_params(args.params, args.overrides, args.profile)


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="COMPOSITE MASK, or one FOLDER of pairs")
    parser.add_argument("-o", "--output", required=True, help="output image (one pair) or folder (batch)")
    parser.add_argument("-m", "--model", help="shorthand for -S harmonize.model=URI")
    args = parser.parse_args(argv)
    if args.model:
        args.overrides.append(f"harmonize.model={args.model}")
    cfg = load_cli_params(args).harmonize
    if len(args.inputs) not in (1, 2):
        raise UserError("give COMPOSITE MASK (one image) or one FOLDER (batch mode)")
    if cfg.mapping not in MAPPINGS:
        raise UserError(f"harmonize.mapping={cfg.mapping!r}: expected one of {list(MAPPINGS)}")

    if len(args.inputs) == 2:
        comp, mask = args.inputs
        for p in (comp, mask):
            if not storage.is_s3(p) and not Path(p).is_file():
                raise UserError(f"{p}: file not found")
        if not storage.is_s3(args.output) and Path(args.output).is_dir():
            raise UserError(f"-o {args.output}: is a folder; give the output image's file name")
        if Path(args.output).resolve() in (Path(comp).resolve(), Path(mask).resolve()):
            raise UserError(f"-o {args.output}: would overwrite an input; choose another file name")
        _warn_if_lossy(args.output)
        harmonizer = _load(cfg)
        try:
            out = harmonizer.harmonize_files(comp, mask)
            data = encode_image(out, args.output)
        except InputError as exc:
            raise UserError(str(exc)) from None
        storage.write_bytes_atomic(args.output, data)
        log.info("wrote %s (%dx%d)", args.output, out.shape[1], out.shape[0])
        return 0

    folder = args.inputs[0]
    if not storage.is_s3(folder) and not Path(folder).is_dir():
        raise UserError(f"{folder}: not a folder (give COMPOSITE MASK for a single image)")
    if not storage.is_s3(args.output):
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"-o {args.output}: is a file; batch mode writes into a folder")
        if out_dir.resolve() == Path(folder).resolve():
            raise UserError(f"-o {args.output}: is the input folder; the outputs would overwrite composites")
    pairs, skipped = find_pairs(folder)
    if not pairs:
        raise UserError(
            f"{folder}: no (composite, mask) pairs found; {len(skipped)} composite(s) without a mask"
        )
    pairs, clashes = _unique_targets(pairs)
    skipped += clashes
    harmonizer = _load(cfg)
    from tqdm import tqdm

    written = 0
    for comp, mask in tqdm(pairs, desc="harmonize", unit="img"):
        target = storage.join(args.output, _stem(comp) + ".png")
        try:
            storage.write_bytes_atomic(target, encode_image(harmonizer.harmonize_files(comp, mask), target))
            written += 1
        except InputError as exc:
            skipped.append((comp, str(exc)))
    for comp, reason in skipped:
        print(f"skipped {comp}: {reason}", file=sys.stderr)
    print(f"harmonized {written} of {written + len(skipped)} composites into {args.output}", file=sys.stderr)
    return 1 if skipped else 0


def _load(cfg) -> Predictor:
    from components.checkpoint import CheckpointError

    if cfg.model.startswith(("runs:/", "models:/")):
        from components import tracking

        tracking.configure(export_env=False)  # MLFLOW_TRACKING_URI, else the project's mlruns.db
    try:
        return Predictor.from_uri(
            cfg.model, device=cfg.device, mapping=cfg.mapping, max_pixels=cfg.max_pixels
        )
    except CheckpointError as exc:
        raise UserError(f"model {cfg.model}: {exc}") from None


def cli(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``harmonize = pipeline.harmonize:cli``)."""
    run_cli(main, argv)


if __name__ == "__main__":
    cli()
