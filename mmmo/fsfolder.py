"""Atomic, retried reads and writes of one folder on any fsspec filesystem.

:class:`FsFolder` is what the study store (:mod:`mmmo.study`) and the result store
(:mod:`mmmo.engine.outcomes`) are built on. Every write is atomic: a local file is written to a
temporary name and renamed over the target; on object stores (s3://) one object is one PUT,
which readers see whole or not at all. On a remote store, every call that fails because the
store does not answer (connection refused or reset, time-outs) is retried with backoff (0.5 s,
doubling, at most 8 s between tries) for up to :attr:`FsFolder.retry_seconds`, on top of the
driver's own retries; ``MMMO_STORE_RETRY_SECONDS`` sets that window for the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

from mmmo.errors import SpecError, StorageUnavailableError
from mmmo.hooks import crash_point

__all__ = ["STORE_S3_CONFIG", "FsFolder"]

LOG = logging.getLogger("mmmo.study")

#: botocore settings of a store on S3: few driver retries, so that a store that does not
#: answer reaches :meth:`FsFolder._retrying` (which backs off and logs) within seconds.
STORE_S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60,
                   "retries": {"max_attempts": 3, "mode": "standard"}}

#: Exception class names (anywhere in the MRO) of a remote store that did not answer: worth
#: retrying. Botocore, aiohttp and the builtins; missing files and refusals are not transient.
_TRANSIENT = frozenset({
    "ConnectionError", "TimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "HTTPClientError", "ClientConnectorError",
    "ServerDisconnectedError", "ClientOSError", "ClientPayloadError", "FSTimeoutError",
})


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError | PermissionError | FileExistsError):
        return False
    return any(cls.__name__ in _TRANSIENT for cls in type(exc).__mro__)


def _retry_window() -> float | None:
    """``MMMO_STORE_RETRY_SECONDS``, checked: seconds a remote store is waited for, or None."""
    raw = os.environ.get("MMMO_STORE_RETRY_SECONDS", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise SpecError("MMMO_STORE_RETRY_SECONDS", "is not a number of seconds >= 0",
                        value=raw, fix="set it to e.g. 300, or unset it for the default")
    return seconds


class FsFolder:
    """One folder ``url`` on an fsspec filesystem: atomic writes, retried calls.

    Args:
        url: The folder (local path, file://, s3://bucket/prefix/..., any fsspec URL).
        storage_options: Passed to fsspec (credentials come from the environment otherwise).
    """

    retry_seconds: float = 300.0
    kind = "store"
    """What the folder is, in messages (``study store``, ``result store``)."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        from mmmo.storage import parse_storage

        self.url = parse_storage(url).url  # a malformed URL never becomes a local folder
        if (window := _retry_window()) is not None:
            self.retry_seconds = window
        options = dict(storage_options or {})
        if self.url.startswith(("s3://", "s3a://")):  # fail fast to _retrying, which waits
            options.setdefault("config_kwargs", STORE_S3_CONFIG)
        self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        self.root = root.rstrip("/")
        self._local = "file" in _protocols(self.fs)

    def resume_hint(self) -> str:
        """What to do once a store that did not answer is back (the end of the error)."""
        return "bring the store back and run the command again"

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` inside the folder (the folder itself for ``""``)."""
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` inside the folder (with its protocol)."""
        return f"{self.url}/{rel}"

    def _retrying(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, retried with backoff while a remote store does not answer."""
        if self._local:
            return fn(*args)
        started = time.monotonic()
        delay, deadline = 0.5, started + self.retry_seconds
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if not _transient(exc):
                    raise
                cause = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailableError(
                        "", f"{self.kind} {self.url} did not answer for "
                        f"{time.monotonic() - started:.0f} s ({what}: {cause})",
                        fix=self.resume_hint()) from exc
                LOG.warning("%s %s: %s failed (%s); retrying in %.1f s",
                            self.kind, self.url, what, cause, delay)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (readers see old or new, never a part)."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        crash_point(f"write:{rel}:before")
        if self._local:
            Path(parent).mkdir(parents=True, exist_ok=True)
            tmp = f"{parent}/.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            crash_point(f"write:{rel}:staged")
            os.replace(tmp, target)
        else:
            self._retrying(f"writing {rel}", self.fs.pipe_file, target, data)  # one PUT
        crash_point(f"write:{rel}:done")

    def write_json(self, rel: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``rel`` atomically."""
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=False).encode())

    def read_bytes(self, rel: str) -> bytes:
        """Read ``rel``; FileNotFoundError if absent."""
        return self._retrying(f"reading {rel}", self.fs.cat_file, self.path(rel))

    def read_json(self, rel: str) -> Any:
        """Read and parse the JSON document ``rel``."""
        return json.loads(self.read_bytes(rel))

    def exists(self, rel: str = "spec.yaml") -> bool:
        """Whether ``rel`` exists in the folder (default: whether the study exists)."""
        return self._retrying(f"looking for {rel}", self._exists, self.path(rel))

    def _exists(self, path: str) -> bool:
        if self._local:
            return self.fs.exists(path)
        try:  # s3fs's exists() answers False when the store does not answer: ask info()
            self.fs.info(path)
            return True
        except FileNotFoundError:
            return False

    def list(self, folder: str, suffix: str = ".json") -> list[str]:
        """Names of the files in ``folder`` ending with ``suffix``, sorted."""
        if not self.exists(folder):
            return []
        self.fs.invalidate_cache(self.path(folder))
        names = [p.rsplit("/", 1)[-1] for p in
                 self._retrying(f"listing {folder}", self.fs.ls, self.path(folder), False)]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith(".tmp-"))

    def remove_stale(self, *, older_than: float = 3600.0) -> list[str]:
        """Remove the staged ``.tmp-*`` files that writers killed mid-write left (local
        folders): those of dead processes of this host, and any older than ``older_than``
        seconds; never a live writer's file."""
        if not self._local or not Path(self.root).is_dir():
            return []
        now, removed = time.time(), []
        for p in Path(self.root).rglob(".tmp-*"):
            try:
                if p.is_file() and (_dead_writer(p.name) or now - p.stat().st_mtime > older_than):
                    p.unlink(missing_ok=True)
                    removed.append(p.relative_to(self.root).as_posix())
            except OSError:
                continue
        if removed:
            LOG.info("%s %s: removed %d leftover(s) of interrupted writes", self.kind, self.url,
                     len(removed))
        return removed


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _dead_writer(name: str) -> bool:
    """Whether a ``.tmp-<host>-<pid>-<id>`` file was staged by a dead process of this host."""
    parts = name.split("-")
    if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)
