"""Credentials never travel inside a URL.

``MLFLOW_TRACKING_URI=http://user:PASSWORD@host`` works with MLflow (requests sends the user info as
basic auth), but a URL is printed everywhere: MLflow's "View run at ..." line, Ray's runtime-env agent
log and worker logs (world-readable), the job API. So:

- ``split_tracking_credentials`` moves the user info of ``MLFLOW_TRACKING_URI`` into
  ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's own basic-auth variables)
  before anything reads the URI: every stage calls it first (``cli.run_cli``), and so does
  ``tracking.configure``. A local Ray started afterwards inherits the two variables; the nodes of a
  cluster hold their own (a Kubernetes Secret, the environment ``ray start`` ran in).
- ``check_no_userinfo`` refuses any other URL with user info that would go into a Ray runtime env
  (``AWS_ENDPOINT_URL=http://key:secret@host``): S3 takes its keys from the AWS variables.
- ``RedactFilter`` replaces the user info of any URL in the project's log lines (and their tracebacks)
  with ``***``; ``redact`` does the same to a message printed directly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from urllib.parse import unquote, urlsplit, urlunsplit

from components.errors import UserError

TRACKING_URI = "MLFLOW_TRACKING_URI"
USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
# scheme://userinfo@ : the user info is everything between // and the first @ before the path
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/\s@]+)@")

log = logging.getLogger(__name__)


def redact(text: str) -> str:
    """``text`` with the user info of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def has_userinfo(value: str) -> bool:
    return bool(_USERINFO.search(value or ""))


def split_tracking_credentials(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Move ``user:password@`` out of ``MLFLOW_TRACKING_URI`` into MLflow's basic-auth variables (a
    variable already set keeps its value); returns whether the URI held any."""
    uri = environ.get(TRACKING_URI, "")
    if not has_userinfo(uri):
        return False
    parts = urlsplit(uri)
    if parts.username:
        environ.setdefault(USERNAME, unquote(parts.username))
    if parts.password:
        environ.setdefault(PASSWORD, unquote(parts.password))
    host = parts.netloc.rsplit("@", 1)[1]
    environ[TRACKING_URI] = urlunsplit(parts._replace(netloc=host))
    log.info("%s held credentials: moved to %s / %s", TRACKING_URI, USERNAME, PASSWORD)
    return True


def strip_credentials(uri: str) -> str:
    """A tracking URI given explicitly (``--tracking-uri``) without its user info, which goes to
    MLflow's basic-auth variables of this process as ``split_tracking_credentials`` does."""
    if not has_userinfo(uri):
        return uri
    env = {TRACKING_URI: uri}
    split_tracking_credentials(env)
    for name in (USERNAME, PASSWORD):
        if name in env:
            os.environ.setdefault(name, env[name])
    return env[TRACKING_URI]


def check_no_userinfo(env: Mapping[str, str]) -> None:
    """``UserError`` naming the first variable whose value is a URL with user info (shown redacted)."""
    for name, value in env.items():
        if has_userinfo(value):
            raise UserError(
                f"{name}={redact(value)}: credentials inside a URL are refused (Ray writes a job's "
                "settings to world-readable logs); give them as separate variables the nodes hold "
                f"({USERNAME} / {PASSWORD} for MLflow, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3)"
            )


class RedactFilter(logging.Filter):
    """A handler filter: the record's message and traceback with URL user info redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_userinfo(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and has_userinfo(record.exc_text):
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """``RedactFilter`` on every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
