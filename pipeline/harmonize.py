"""``harmonize``: harmonize one composite, or a folder of (composite, mask) pairs, at any resolution.

    harmonize composite.jpg mask.png -o out.png [--model models:/rainnet@champion] [--tracking-uri URI]
    harmonize photos/ -o harmonized/          # pairs: <name>.jpg + <name>_mask.png, or images/ + masks/,
                                              # or an iHarmony4 subset (composite_images/ + masks/)

The network runs at its training size; its colour transform (``affine`` / ``pct`` heads), or a colour
mapping fitted to its output (``image`` head), carries the result to full resolution
(``components.predictor``), so the background stays pixel-identical and the foreground sharp.
Exit status: 0 all written; 2 bad input or params (one image: nothing written); 1 batch mode skipped
some pairs (every good pair is still written, each bad one reported on stderr with its reason).
Outputs are written to a temporary name and renamed, so no half-written image is ever left behind;
an output file that already exists is refused (exit 2, nothing written) unless ``--overwrite``.
A ``runs:/`` or ``models:/`` model is read from ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
the project's ``mlruns.db`` (an error outside a project: no empty database is created). The file work
is ``components.harmonize_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.cli import UserError, add_tracking_uri, base_parser, run_cli
from components.config import Params, load_params, params_from_dict

PARAMS = ("harmonize",)


def load_cli_params(args) -> Params:
    """params.yaml when present; anyone with only a model file gets the defaults (plus ``-S`` overrides)."""
    if args.params == "params.yaml" and not Path("params.yaml").is_file() and not args.profile:
        return params_from_dict({}, args.overrides)
    return load_params(args.params, args.overrides, args.profile)


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.harmonize") -> int:
    parser = base_parser(__doc__, prog, PARAMS)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="COMPOSITE MASK, or one FOLDER of pairs")
    parser.add_argument("-o", "--output", required=True, help="output image (one pair) or folder (batch)")
    parser.add_argument("-m", "--model", help="shorthand for -S harmonize.model=URI")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist (default: refuse)"
    )
    add_tracking_uri(parser)
    args = parser.parse_args(argv)
    if args.model:
        args.overrides.append(f"harmonize.model={args.model}")
    cfg = load_cli_params(args).harmonize
    from components.harmonize_files import harmonize_folder, harmonize_pair  # torch: after --help
    from components.predictor import MAPPINGS

    if len(args.inputs) not in (1, 2):
        raise UserError("give COMPOSITE MASK (one image) or one FOLDER (batch mode)")
    if cfg.mapping not in MAPPINGS:
        raise UserError(f"harmonize.mapping={cfg.mapping!r}: expected one of {list(MAPPINGS)}")
    if len(args.inputs) == 2:
        return harmonize_pair(*args.inputs, args.output, cfg, args.tracking_uri, overwrite=args.overwrite)
    return harmonize_folder(args.inputs[0], args.output, cfg, args.tracking_uri, overwrite=args.overwrite)


def cli(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``harmonize = pipeline.harmonize:cli``)."""
    run_cli(lambda a: main(a, prog="harmonize"), argv)


if __name__ == "__main__":
    run_cli(main)
