"""Stage ``evaluate``: score a generator on a test set; per-image CSV, summary tables, MLflow, DVC metrics.

Every image is harmonized at its native resolution by the same ``Predictor`` that ``harmonize`` and the
MLflow model use, and scored against the real image next to the unharmonized composite; the paper's
protocol (the RainNet authors' evaluate.py, docs/PAPER_PROTOCOL.md) is reported apart (``paper`` in the
summary, ``paper_*`` metrics overall and per subset). The network runs on batches of
``evaluate.batch_size`` images, with a progress bar.

    python -m pipeline.evaluate                                   # models/generator.pt on the prepare test shards
    python -m pipeline.evaluate -S evaluate.model=models:/rainnet@champion -S evaluate.data=s3://bucket/iHarmony4

The evaluation is an MLflow run in ``evaluate.experiment``, tagged with the model's training run id
(``model_run_id``); its metrics are ``test_mse`` ... ``test_fpsnr`` overall, ``test_fmse.<subset>`` and
``test_fmse.fg_0-5`` per group, and ``composite_*`` for the unharmonized baseline. The work is
``components.stages.evaluate``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from components.cli import add_tracking_uri, base_parser, params_from_args, run_cli

PARAMS = ("storage", "prepare.name", "prepare.card", "train.dataset", "evaluate", "harmonize.mapping")
log = logging.getLogger("evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.evaluate", PARAMS)
    add_tracking_uri(parser)
    args = parser.parse_args(argv)
    params = params_from_args(args)
    from components import tracking  # torch and MLflow: after --help
    from components.stages import evaluate

    tracking.configure(args.tracking_uri)
    summary = evaluate.run(params)
    o, c = summary["harmonized"]["overall"], summary["composite"]["overall"]
    log.info(
        "fMSE %.2f (composite %.2f), PSNR %.2f (composite %.2f); MLflow run %s",
        o["fmse"], c["fmse"], o["psnr"], c["psnr"], summary["eval_run_id"],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    run_cli(main)
