"""What ``make pipeline`` produced, and what to run next: its last lines (after DVC's own output).

    python -m pipeline.summary          # reads train.metrics_out, evaluate.summary_out and register.out

Prints the training run, the model's URIs, the registry decision and the champion, then the commands a
user runs next (the MLflow UI, harmonize, serving, experiments). Exit 2 when a stage's output is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("train.metrics_out", "evaluate.summary_out", "register")


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__, "python -m pipeline.summary", PARAMS).parse_args(argv)
    params = params_from_args(args)
    from components.stages import summary

    print("\n".join(summary.run(params)))
    return 0


if __name__ == "__main__":
    run_cli(main)
