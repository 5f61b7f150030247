"""Stage ``register``: put the evaluated model in the MLflow Model Registry and promote it by alias.

    python -m pipeline.register                      # the model evaluate scored (metrics/eval.json)
    python -m pipeline.register --tracking-uri http://mlflow:5000

The version gets the evaluation metrics, test set id, dataset card hash and placement as tags and the
model card (``reports/model_card.md``) as its description. New versions become ``challenger``; one
becomes ``champion`` only when it strictly beats the champion on the same test set by ``register.metric``
/ ``register.mode`` (the champion is re-evaluated on this test set when its tags are for another one), and
(``register.beat_composite``) also beats the unharmonized composite there (``components.evaluation.promotion``).
Rerunning for the same training run registers nothing new. Writes ``register.out``.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import add_tracking_uri, base_parser, params_from_args, run_cli

PARAMS = (
    "storage", "prepare.card", "evaluate.split", "evaluate.device", "evaluate.showcase_out", "harmonize.mapping",
    "register",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.register", PARAMS)
    add_tracking_uri(parser)
    args = parser.parse_args(argv)
    params = params_from_args(args)
    from components import tracking  # torch and MLflow: after --help
    from components.stages import register

    tracking.configure(args.tracking_uri)
    register.run(params)
    return 0


if __name__ == "__main__":
    run_cli(main)
