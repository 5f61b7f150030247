"""One writer per dataset: the lock a ``prepare`` holds on ``<root>/datasets/<name>`` while it writes.

Two ``prepare`` runs on the same storage root and dataset name would otherwise each remove the other's
unfinished version and publish a manifest whose shards are gone. The lock lives beside the dataset
folder, at ``<root>/datasets/<name>.lock`` (outside what DVC tracks), and is held from before the first
photo is read until the DVC copies of the published manifest are written:

- locally, an ``fcntl.flock`` on that file: the kernel releases it when the holder exits, however it
  ends (a ``kill -9`` included), so a dead run never blocks the next one;
- on S3, a lease object created with a conditional PUT (``If-None-Match: *``), renewed by a background
  thread with ``If-Match`` on its own ETag every quarter of the lease, and deleted with ``If-Match`` at
  the end. A lease not renewed for ``lease_s`` (its holder died or stalled; ages are read on the
  server's clock) may be taken over, again with ``If-Match``, so two runs cannot both take it. A
  holder that lost its lease finds out at :meth:`DatasetLock.check`, before it publishes, and fails.

A second run fails at once with a ``DatasetLocked`` error naming the holder (host, pid, since when).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from components import storage
from components.errors import UserError
from components.storage import ConditionFailed, Store

log = logging.getLogger(__name__)

LEASE_ENV = "HARMONIZE_LOCK_LEASE_S"  # how long an S3 lease lasts without renewal (default 300 s)
DEFAULT_LEASE_S = 300.0


class DatasetLocked(UserError):
    """Another ``prepare`` holds the dataset (exit 2, holder named)."""


def lock_uri(root: str, name: str) -> str:
    return storage.join(root, "datasets", f"{name}.lock")


def _holder(token: str, lease_s: float, since: float, beat: int = 0) -> bytes:
    """The lock's record: who holds it and for how long a beat lasts (a renewal changes ``beat``)."""
    record = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": since}
    return json.dumps({**record, "lease_s": lease_s, "beat": beat}).encode()


def _describe(data: bytes) -> str:
    try:
        h = json.loads(data)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(h["since"])))
        return f"pid {h['pid']} on {h['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return "a writer that left no readable record"


def _token(data: bytes) -> str | None:
    try:
        return json.loads(data).get("token")
    except (ValueError, AttributeError):
        return None


class DatasetLock:
    """``with DatasetLock(store, name):`` -- exclusive right to write ``<root>/datasets/<name>``."""

    def __init__(self, store: Store, name: str, lease_s: float | None = None):
        self.store, self.name = store, name
        self.uri = lock_uri(store.root, name)
        self.lease_s = float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S) if lease_s is None else lease_s
        self.token, self.since, self.beats = uuid.uuid4().hex, time.time(), 0
        self._fd: int | None = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- taking and giving back ------------------------------------------------------------------------

    def acquire(self) -> DatasetLock:
        try:
            if self.store.is_s3:
                self._acquire_s3()
            else:
                self._acquire_local()
        except DatasetLocked:
            raise
        except OSError as exc:  # no permission on the lock, the server out of reach
            raise UserError(f"{self.uri}: cannot take the dataset's lock ({exc})") from None
        return self

    def _busy(self, who: str) -> DatasetLocked:
        return DatasetLocked(
            f"{storage.join(self.store.root, 'datasets', self.name)}: another prepare is writing this dataset "
            f"({who}; lock {self.uri}); wait for it to finish, or use another prepare.name"
        )

    def _acquire_local(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(self.uri)), exist_ok=True)
        fd = os.open(self.uri, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._busy(who) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder(self.token, 0, self.since), 0)
        self._fd = fd

    def _acquire_s3(self) -> None:
        record = _holder(self.token, self.lease_s, self.since)
        try:
            self._etag = self.store.put_if(self.uri, record)
        except ConditionFailed:
            current = self.store.get_with_etag(self.uri)
            if current is None:  # released between the two calls: one more try, no waiting
                try:
                    self._etag = self.store.put_if(self.uri, record)
                except ConditionFailed:
                    raise self._busy("a writer that just took it") from None
            else:
                data, etag, age = current
                try:
                    lease = float(json.loads(data).get("lease_s", DEFAULT_LEASE_S))
                except (ValueError, TypeError, AttributeError):
                    lease = DEFAULT_LEASE_S
                if age < lease:
                    raise self._busy(f"{_describe(data)}, lease renewed {age:.0f} s ago") from None
                try:  # the holder stopped renewing: take the lease over, only if nobody else did first
                    self._etag = self.store.put_if(self.uri, record, etag=etag)
                except ConditionFailed:
                    raise self._busy("a writer that just took over an expired lease") from None
                log.warning("%s: took over an expired lease (%s, not renewed for %.0f s)", self.uri,
                            _describe(data), age)  # fmt: skip
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.name}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(max(self.lease_s / 4, 1.0)):
            self.beats += 1
            record = _holder(self.token, self.lease_s, self.since, self.beats)
            try:
                self._etag = self.store.put_if(self.uri, record, etag=self._etag)
            except ConditionFailed:
                self._lost = f"{self.uri}: the lease was taken over by another prepare"
                log.error("%s; this run will not publish", self._lost)
                return
            except OSError as exc:  # the server is out of reach: try again at the next beat
                log.warning("%s: could not renew the lease: %s", self.uri, exc)

    def check(self) -> None:
        """``DatasetLocked`` when this run no longer holds the lock (an S3 lease taken over after it
        expired): called right before publishing, so a stalled run never overwrites a newer dataset."""
        if not self.store.is_s3:
            return
        if self._lost is None:
            current = self.store.get_with_etag(self.uri)
            if current is None or _token(current[0]) != self.token:
                self._lost = f"{self.uri}: the lease expired and was taken over by another prepare"
        if self._lost:
            raise DatasetLocked(f"{self._lost}; this run's dataset version is not published")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file gives the flock back
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            if self._lost is None and self._etag is not None:
                self.store.delete_if(self.uri, self._etag)

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
