"""Shared CLI plumbing for ``python -m pipeline.<stage>``: params, profile, overrides and clean failures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from components.config import ConfigError, Params, load_params


class UserError(RuntimeError):
    """An error the user can fix (bad input file, bad params): printed without a traceback, exit 2."""


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--profile", default=None, help="profile merged over the params file: profiles/<NAME>.yaml"
    )
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, e.g. -S train.epochs=2 (repeatable)",
    )
    return parser


def params_from_args(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides, args.profile)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``; user errors become one clear line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = main(argv)
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
