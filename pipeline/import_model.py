"""``import_model``: bring a published checkpoint in as a tracked, registered model (docs/IMPORT.md).

    python -m pipeline.import_model net_G_last.pth --format rainnet-authors                 # 256 model
    python -m pipeline.import_model net_G_last_512.pth --format rainnet-authors --image-size 512

``rainnet-authors`` is the generator state dict the RainNet authors publish (junleen/RainNet). It is
read weights-only, every key mapped onto this project's RainNet and every shape checked; anything else
(another network, a truncated file, a pickle with code, another ngf or input channel count) stops with
one line naming the first key or the reason, exit status 2, and nothing registered. A checkpoint that
fits becomes an MLflow run in ``harmonization-import`` (params: source format, file sha256, ngf, depth,
image size) with the generator logged as the project's MLflow model, and a version of ``rainnet``
tagged ``source=authors``. It becomes ``champion`` the usual way: ``evaluate`` it, then ``register``.
The work is ``components.stages.import_model``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from components.cli import add_tracking_uri, plain, run_cli

RAW = argparse.RawDescriptionHelpFormatter


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(  # no params.yaml: everything it needs is on the command line
        prog="python -m pipeline.import_model", description=plain(__doc__), formatter_class=RAW
    )
    parser.add_argument("path", metavar="PATH", help="the checkpoint file (local path or s3://)")
    parser.add_argument("--format", required=True, choices=["rainnet-authors"], help="what the file is")
    parser.add_argument("--image-size", type=int, default=256, help="the size the network was trained at "
                        "and runs at: 256 (net_G_last.pth) or 512 (default 256)")  # fmt: skip
    parser.add_argument("--ngf", type=int, default=64, help="filters of the first layer (published: 64)")
    parser.add_argument("--input-nc", type=int, default=3, choices=[3, 4], help="input channels: "
                        "3 (composite; the published models) or 4 (composite + mask)")  # fmt: skip
    parser.add_argument("--placement", default="rain-decoder", help="their norm_type_indicator as a "
                        "Table 1 name or I/R string (published: rain-decoder)")  # fmt: skip
    parser.add_argument("--experiment", default="harmonization-import", help="MLflow experiment of the run")
    parser.add_argument("--model-name", default="rainnet", help="registered model (default rainnet)")
    parser.add_argument("--out", default=None, help="also write the result (version, run id) as JSON here")
    add_tracking_uri(parser)
    args = parser.parse_args(argv)
    from components import tracking  # torch and MLflow: after --help
    from components.stages import import_model
    from components.storage import Store

    tracking.configure(args.tracking_uri)
    result = import_model.run(args.path, args.format, args.image_size, args.ngf, args.input_nc,
                              args.placement, args.experiment, args.model_name)  # fmt: skip
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Store().write_bytes(args.out, text.encode())  # atomic: a temporary name, then a rename
    print(text, end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
