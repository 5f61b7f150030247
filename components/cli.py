"""Shared CLI plumbing for ``python -m pipeline.<stage>``: params, profile, overrides and clean failures."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from components.config import ConfigError, Params, flatten, load_params, params_from_dict
from components.errors import UserError

# Loggers that talk at INFO about their own start-up (database migrations, connection pools): quiet
# unless something goes wrong.
QUIET_LOGGERS = ("alembic", "mlflow", "urllib3", "botocore", "boto3", "filelock", "numexpr")


def plain(doc: str) -> str:
    """A docstring as terminal text: ``code`` markup becomes plain ``code``."""
    return re.sub(r"``([^`]+)``", r"\1", doc).strip()


def _example(key: str, value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "-S " + shlex.quote(f"{key}={text}")


def params_epilog(sections: Sequence[str], params: Params | None = None) -> str:
    """The params keys a stage reads (``sections``: ``train`` or ``prepare.name``), one example each.

    The examples are the values of ``params.yaml`` in the working directory when it loads, else the
    built-in defaults."""
    if params is None:
        try:
            params = load_params("params.yaml")
        except (ConfigError, OSError):
            params = Params()
    flat = flatten(params.to_dict())
    keys = [k for k in flat if any(k == s or k.startswith(s + ".") for s in sections)]
    lines = [_example(k, flat[k]) for k in keys]
    head = "params keys this stage reads, each with its current value (change any with -S KEY=VALUE):"
    return "\n".join([head, *(f"  {line}" for line in lines)])


def base_parser(
    doc: str, prog: str, sections: Sequence[str] = (), examples: bool = True
) -> argparse.ArgumentParser:
    """The stage's parser: ``prog`` as the user types it, the module docstring as plain text, and the
    params keys the stage reads (``sections``) listed after the options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=plain(doc),
        epilog=params_epilog(sections) if sections and examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        help="override a params key (repeatable); the keys this stage reads are listed below",
    )
    return parser


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri``: the MLflow store to use (see ``components.tracking.tracking_uri``)."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlruns.db, "
        "the project root being the nearest folder at or above this one with params.yaml)",
    )


def params_from_args(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides, args.profile)


def params_or_defaults(args: argparse.Namespace) -> Params:
    """params.yaml when present; anyone with only a model file gets the defaults (plus ``-S`` overrides)."""
    if args.params == "params.yaml" and not Path("params.yaml").is_file() and not args.profile:
        return params_from_dict({}, args.overrides)
    return load_params(args.params, args.overrides, args.profile)


def quiet_startup_logs() -> None:
    """Keep the stage's own INFO lines; libraries' start-up chatter only from WARNING up."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``; user errors become one clear line on stderr and exit status 2."""
    from components import credentials

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    credentials.install_redaction()  # no URL user info in any line this process logs
    quiet_startup_logs()
    credentials.split_tracking_credentials()  # before MLflow or a local Ray sees the URI
    try:
        code = main(argv)
    except (ConfigError, UserError) as exc:
        print(f"error: {credentials.redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
