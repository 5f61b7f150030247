"""Checks that run before any compute: the GPUs asked for are there (the storage bucket is checked by
``components.storage.Store.check_bucket``, called in the same place).

A training that asks for a GPU the cluster does not have waits forever for resources (and leaves its
MLflow run RUNNING); a missing bucket is otherwise found only when the first checkpoint is written. Both
are ``UserError`` (exit 2), before Ray is started and before any MLflow run is created.
"""

from __future__ import annotations

import os

from components.errors import UserError


def _require(t, section: str, have: float, where: str, fix: str) -> None:
    needed = t.num_workers * t.gpus_per_worker
    if have < needed:
        raise UserError(
            f"{section}.use_gpu=true needs {needed:g} GPU(s) ({t.num_workers} workers x "
            f"{t.gpus_per_worker:g}) but {where} has {have:g}; set {section}.use_gpu=false or {fix}"
        )


def check_local_gpus(t, section: str = "train") -> None:
    """Before ``ray.init`` on this machine (no ``RAY_ADDRESS``): CUDA must show the GPUs asked for."""
    if not t.use_gpu or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _require(t, section, have, "CUDA on this machine", "run on a GPU machine (RAY_ADDRESS for a cluster)")


def check_cluster_gpus(t, section: str = "train") -> None:
    """Right after connecting to Ray: the cluster must have the GPUs asked for (else training hangs)."""
    if not t.use_gpu:
        return
    import ray

    have = float(ray.cluster_resources().get("GPU", 0))
    _require(t, section, have, "the Ray cluster", "add GPU nodes")
