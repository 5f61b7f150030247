"""``serve``: the registry's model over HTTP: MLflow's own scoring app (``/invocations``, ``/ping``),
one worker, behind a guard that answers 400 to a request nested deeper than any real one (``mlflow
models serve`` answers such a body with a bare 500: docs/FAULTS.md).

    python -m pipeline.serve -m models:/rainnet@champion                # 127.0.0.1:5001 (mlflow ui keeps 5000)
    python -m pipeline.serve -m models:/rainnet/3 -p 5002 --tracking-uri http://mlflow:5000

The request (the two image files, base64, or uint8 lists) and a client: docs/STAGES.md, "Serving the
registry's model". The app is ``components.tracking.serving.serve``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from components.cli import add_tracking_uri, plain, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve")  # fmt: skip
    parser.add_argument("-m", "--model-uri", required=True, help="models:/rainnet@champion, models:/rainnet/N, runs:/<id>/model")
    parser.add_argument("-h", "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=5001, help="port (default 5001; mlflow ui keeps 5000)")
    parser.add_argument("--help", action="help", help="show this message and exit")
    add_tracking_uri(parser)
    args = parser.parse_args(argv)
    from components import tracking  # MLflow: after --help
    from components.errors import UserError
    from components.tracking import serving

    try:
        tracking.configure_reader(args.tracking_uri)  # an existing store: serving creates none
    except LookupError as exc:
        raise UserError(f"model {args.model_uri}: {exc}") from None
    serving.serve(args.model_uri, args.host, args.port)
    return 0


if __name__ == "__main__":
    run_cli(main)
