"""``harmonize``: harmonize one composite, or a folder of (composite, mask) pairs, at any resolution.

    harmonize composite.jpg mask.png -o out.png [--model models:/rainnet@champion] [--tracking-uri URI]
    harmonize photos/ -o harmonized/          # pairs: <name>.jpg + <name>_mask.png, or images/ + masks/,
                                              # or an iHarmony4 subset (composite_images/ + masks/)

The network runs at its training size; its colour transform (``affine`` / ``pct`` heads), or a colour
mapping fitted to its output (``image`` head), carries the result to full resolution
(``components.inference.predictor``), so the background stays pixel-identical and the foreground sharp.
Exit status: 0 all written; 2 bad input or params (one image: nothing written); 1 batch mode skipped
some pairs (every good pair is still written, each bad one reported on stderr with its reason).
Outputs are written to a temporary name and renamed, so no half-written image is ever left behind;
an output file that already exists is refused (exit 2, nothing written) unless ``--overwrite``.
A ``runs:/`` or ``models:/`` model is read from ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
the project's ``mlruns.db`` (an error outside a project: no empty database is created). The file work
is ``components.stages.harmonize``.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import add_tracking_uri, base_parser, params_or_defaults, run_cli

PARAMS = ("harmonize",)


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
    params = params_or_defaults(args)
    from components.stages import harmonize  # torch: after --help

    return harmonize.run(params, args.inputs, args.output, args.tracking_uri, overwrite=args.overwrite)


def cli(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``harmonize = pipeline.harmonize:cli``)."""
    run_cli(lambda a: main(a, prog="harmonize"), argv)


if __name__ == "__main__":
    run_cli(main)
