"""The few numbers each stage declares as DVC metrics: measurements only, so ``dvc metrics show`` fits a
screen and ``dvc metrics diff`` after an identical rerun shows nothing but what was measured.

Ids, hashes, cards and sentences stay in each stage's full JSON (a plain DVC output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.storage import Store


def _r(value: Any) -> float:
    return round(float(value), 4)


def prepare(card: dict) -> dict[str, Any]:
    """Triplets per split and the inputs skipped."""
    out = {f"{split}_triplets": int(n) for split, n in card["counts"].items()}
    out["inputs_skipped"] = int(sum(card.get("skipped", {}).values()))
    return out


def train(summary: dict) -> dict[str, Any]:
    """Validation PSNR / fMSE of the kept model and of the unharmonized composite, and the speed."""
    comp = summary["composite"]
    return {
        "val_psnr": _r(summary["val_psnr"]),
        "val_fmse": _r(summary["val_fmse"]),
        "composite_val_psnr": _r(comp["val_psnr"]),
        "composite_val_fmse": _r(comp["val_fmse"]),
        "images_per_s": _r(summary["images_per_s"]),
    }


def evaluate(summary: dict) -> dict[str, Any]:
    """Overall test PSNR / fMSE of the model and of the unharmonized composite."""
    model, comp = summary["harmonized"]["overall"], summary["composite"]["overall"]
    return {
        "test_psnr": _r(model["psnr"]),
        "test_fmse": _r(model["fmse"]),
        "composite_test_psnr": _r(comp["psnr"]),
        "composite_test_fmse": _r(comp["fmse"]),
    }


def write(path: str, numbers: dict[str, Any], store: Store | None = None) -> None:
    """Write a headline JSON atomically through the stage's store (DVC reads it as a metrics file)."""
    (store or Store()).write_bytes(path, (json.dumps(numbers, indent=2) + "\n").encode())


def path_for(full: str) -> str:
    """Where a stage's headline goes: beside its full JSON, in ``headline/`` (``metrics/train.json`` ->
    ``metrics/headline/train.json``), so an overridden output path carries its headline along."""
    return str(Path(full).parent / "headline" / Path(full).name)


def drop_stale(eval_summary: str, model_run_id: str) -> bool:
    """Remove the evaluation headline when it scored another model than the one just trained.

    ``dvc exp run ... train`` commits the workspace as it is: without this the experiment would show the
    previous model's test numbers as its own. Missing, the experiment shows none, and DVC reruns
    ``evaluate`` (its output is gone). Returns whether a headline was removed."""
    head = Path(path_for(eval_summary))
    try:
        scored = json.loads(Path(eval_summary).read_text()).get("model_run_id")
    except (OSError, ValueError):
        scored = None
    if not head.is_file() or scored == model_run_id:
        return False
    head.unlink()
    return True
