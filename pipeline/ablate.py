"""``python -m pipeline.ablate``: the RAIN placement ablations (and DIH vs DIH + RAIN) as one Ray Tune sweep.

    python -m pipeline.ablate                                            # params.yaml's ablate section
    python -m pipeline.ablate -S 'ablate.placements=[baseline,rain-decoder,rain-5]' -S ablate.epochs=3
    python -m pipeline.ablate -S 'ablate.families=[dih,dih_rain]'       # the supplementary's Fig. 4

Each distinct network is one Tune trial that trains with the ``train`` section (same data, epochs and
seed); a local Ray is started unless ``RAY_ADDRESS`` points at a cluster. MLflow: one parent run per
sweep in ``ablate.experiment`` with a nested child run per trial. Writes ``ablate.csv_out``,
``ablate.md_out`` and ``ablate.figure_out``. Rerunning
the same command skips finished variants and resumes the others.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from components.cli import base_parser, params_from_args, run_cli

PARAMS = ("storage", "prepare.name", "prepare.card", "model", "train", "ablate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__, "python -m pipeline.ablate", PARAMS)
    args_list = list(sys.argv[1:] if argv is None else argv)
    params = params_from_args(parser.parse_args(args_list))
    from components.stages import ablate  # torch, Ray and MLflow: after --help

    command = shlex.join(["python", "-m", "pipeline.ablate", *args_list])
    out = ablate.run(params, command=command)
    failed = [r["variant"] for r in out["rows"] if r["status"] not in ("FINISHED", "STOPPED")]
    stopped = [r["variant"] for r in out["rows"] if r["status"] == "STOPPED"]
    print(
        f"ablation {out['key']}: {len(out['rows'])} distinct networks, "
        f"{len(out['rows']) - len(failed) - len(stopped)} finished"
        + (f", stopped early by ASHA: {', '.join(stopped)}" if stopped else "")
        + (f", not finished: {', '.join(failed)}" if failed else "")
        + f"; table {params.ablate.md_out}, MLflow parent run {out['parent_run_id']}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
