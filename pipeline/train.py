"""``python -m pipeline.train``: train a generator on the prepare shards with Ray Train, tracked in MLflow.

    python -m pipeline.train                                    # the laptop profile (params.yaml)
    python -m pipeline.train -S train.num_workers=2 -S train.epochs=3
    RAY_ADDRESS=http://head:8265 ray job submit --working-dir . -- python -m pipeline.train --profile paper

A local Ray is started unless ``RAY_ADDRESS`` points at a cluster. Rerunning the same command resumes
from the last checkpoint under ``<storage.root>/ray/``. Writes ``train.weights_out`` (the generator
file), ``train.metrics_out`` (final validation metrics, the composite baseline, the MLflow run id) and
``train.plots_out`` (one row per epoch), and the headline numbers DVC shows as metrics
(``metrics/headline/train.json``); removes the test headline of the previous model (``evaluate`` has
not scored this one yet: ``dvc exp run ... train`` shows no test numbers rather than stale ones). The driver prints one progress line per epoch with the ETA.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("storage", "prepare.name", "prepare.card", "model", "train", "evaluate.model", "evaluate.summary_out")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.train", PARAMS)
    params = params_from_args(parser.parse_args(argv))
    from components.stages import train  # torch and Ray: after --help

    out = train.run(params)  # also writes the stage files, metrics/headline/train.json among them
    print(
        f"trained {out['train_key']} to epoch {out['epochs_done']}: val fMSE {out['val_fmse']:.2f} "
        f"(composite {out['composite']['val_fmse']:.2f}), PSNR {out['val_psnr']:.2f} dB "
        f"(composite {out['composite']['val_psnr']:.2f}); MLflow run {out['run_id']}, model {out['model_uri']}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
