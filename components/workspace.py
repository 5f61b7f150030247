"""Where the project is when a stage runs inside one of DVC's temporary workspaces.

``dvc exp run --temp`` / ``--queue`` run a stage in ``<project>/.dvc/tmp/exps/<tmp>/``, a copy of the
git-tracked files only: the storage root (shards, checkpoints) and the MLflow database stay in the
project, so the store (``storage.Store.from_config``) and the tracking URI are resolved there.
"""

from __future__ import annotations

import os
from pathlib import Path


def main_workspace(path: str | Path | None = None) -> Path | None:
    """The project a DVC experiment runs for when ``path`` (default: cwd) is inside one of DVC's temporary
    workspaces; else None."""
    parts = Path(path or os.getcwd()).resolve().parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return None
