"""Refuse, before any work, a Ray job whose runs would be lost: storage or tracking on one machine only.

A job (``ray job submit``) runs in a temporary copy of the working dir on the head node, and its workers
run on other nodes; a driver on a laptop with ``RAY_ADDRESS`` pointing at a remote cluster has workers
that cannot see the laptop's disk. In both cases a relative ``storage.root`` (``data/store``: ignored by
git, never uploaded, and deleted with the job's working dir) and a sqlite or ``file:`` MLflow store
(written where the process happens to run) would "succeed" into files nobody keeps. Local runs
(no ``RAY_ADDRESS``, or a Ray on this machine) are not checked, so ``dvc repro`` works as before.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from components import storage, tracking
from components.errors import UserError

log = logging.getLogger(__name__)

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted entrypoint
LOCAL_HOSTS = {"", "127.0.0.1", "localhost", "::1", "0.0.0.0"}
SHARED_TRACKING = ("http", "https", "postgresql", "mysql", "mssql", "databricks")


def where() -> str | None:
    """``"a Ray job"``, ``"a remote Ray cluster (<address>)"``, or None for a run on this machine."""
    if os.environ.get(JOB_ENV):
        return "a Ray job"
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address in ("auto", "local"):
        return None
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return None if host in LOCAL_HOSTS else f"a remote Ray cluster ({address})"


def check_shared(root: str, uri: str | None = None) -> None:
    """``UserError`` when running in a job / against a remote cluster with a machine-local store.

    ``root`` is ``storage.root``; ``uri`` the tracking URI (default: ``tracking.tracking_uri()``).
    """
    context = where()
    if context is None:
        return
    uri = uri or tracking.tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if scheme not in SHARED_TRACKING:
        raise UserError(
            f"MLFLOW_TRACKING_URI={uri}: in {context} runs must go to a shared MLflow server, not a store "
            "on one machine; pass it to the job, e.g. ray job submit --runtime-env-json "
            '\'{"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}\''
        )
    if storage.is_s3(root):
        return
    if root.startswith("file:") or not os.path.isabs(root):
        raise UserError(
            f"storage.root={root}: in {context} shards and checkpoints must be on storage every node "
            "reaches (-S storage.root=s3://bucket/prefix); a relative folder is not uploaded with the job"
        )
    log.warning("storage.root=%s: every Ray node must mount this folder at the same path", root)
