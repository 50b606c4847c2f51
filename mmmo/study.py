"""The study store: the single source of truth of a search, on any fsspec filesystem.

Layout under ``<storage>/<study>/``::

    spec.yaml                 the spec the study was created with (every default written out)
    study.json                objective names, search-space names, mm-mo version, created time
    lease.json                which run holds the study, until when (heartbeat-renewed)
    proposals/0003.json       iteration 3's proposed batch, written BEFORE it is evaluated
    trials/0017.json          one whole trial: recipe, x, objectives, stderrs, status, error,
                              timings, per-benchmark lm-eval results
    optimizer.json            the optimizer's state after the last update (for inspection;
                              resuming replays trials, so the store alone is enough)
    outcomes/<key>.json       one finished benchmark (or merge info) by its cache key, written
                              as soon as it is known: a resumed run re-uses it
    final.json                the pick, the score table and the export, once finished
    exports/<recipe_id>/      exported HF folders + mergekit YAML
    reports/                  report.md / report.html / PNGs

Every write is atomic: a local file is written to a temporary name and renamed over the
target; on object stores (s3://) one object is one PUT, which readers see whole or not at all.
A record is therefore never seen half-written, and a crash leaves at most a stray temp file
(or a partial export folder), which the next run removes when it takes the lease
(:meth:`StudyStore.sweep`).

Credentials and endpoints of remote stores come from the usual environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible
servers, ...), or from ``storage_options`` passed to :class:`StudyStore`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from mmmo import __version__
from mmmo._crash import crash_point
from mmmo.errors import LeaseHeldError, SpecError, StorageUnavailableError, StudyError
from mmmo.spec import _STUDY, SearchSpec, parse_spec
from mmmo.storage import PROBE_S3_CONFIG, check_storage, parse_storage

__all__ = ["PROBE_S3_CONFIG", "Lease", "Proposal", "StudyStore", "TrialRecord", "check_storage",
           "check_study", "search_fields_differ"]

#: botocore settings of a study store on S3: few driver retries, so that a store that does not
#: answer reaches :meth:`StudyStore._retrying` (which backs off and logs) within seconds.
STORE_S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60,
                   "retries": {"max_attempts": 3, "mode": "standard"}}

LOG = logging.getLogger(__name__)

TrialStatus = Literal["complete", "failed"]

#: Spec sections that define the search itself: a resumed study must not change them.
SEARCH_FIELDS = ("base", "sources", "merge", "objectives", "optimizer")


def utcnow() -> str:
    """Now, as an ISO-8601 UTC timestamp."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProposedTrial(_Record):
    """One recipe of a proposed batch."""

    number: int
    x: list[float]
    recipe_id: str
    recipe: dict[str, Any]


class Proposal(_Record):
    """A batch the optimizer proposed, stored before any of it is evaluated."""

    iteration: int
    trials: list[ProposedTrial]
    strategy: str
    seconds: float = 0.0
    created_at: str = Field(default_factory=utcnow)


class TrialRecord(_Record):
    """A finished trial (complete or failed), written whole as one JSON document."""

    number: int
    iteration: int
    recipe_id: str
    x: list[float]
    recipe: dict[str, Any]
    params: dict[str, float | list[float]] = Field(default_factory=dict)
    """The recipe's searched values, flat (``"<source>.<parameter>"``), for tables."""
    status: TrialStatus
    objectives: dict[str, float | None] = Field(default_factory=dict)
    """Natural-scale values by objective name (score, or the L1 sparsity); None if failed."""
    values: list[float | None] = Field(default_factory=list)
    """The maximised vector the optimizer is told (None where failed)."""
    stderrs: list[float | None] = Field(default_factory=list)
    sparsity_by_group: dict[str, float] = Field(default_factory=dict)
    benchmarks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per objective: the benchmark result or its typed failure (JSON)."""
    error: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    worker: str = ""
    finished_at: str = Field(default_factory=utcnow)

    @property
    def trial_id(self) -> str:
        """Zero-padded trial number, the record's file name."""
        return f"{self.number:04d}"


@dataclass(frozen=True)
class Lease:
    """Who holds a study, and until when."""

    holder: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float

    def is_stale(self, now: float | None = None) -> bool:
        """Expired, or held by a process on this host that no longer exists."""
        now = time.time() if now is None else now
        if self.expires_at < now:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def search_fields_differ(a: SearchSpec, b: SearchSpec) -> list[str]:
    """Names of the search-defining spec sections that differ between ``a`` and ``b``."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [k for k in SEARCH_FIELDS if da[k] != db[k]]


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


class StudyStore:
    """Read and write one study under ``<storage>/<name>/`` through fsspec.

    On a remote store, every read and write that fails because the store does not answer
    (connection refused or reset, time-outs) is retried with backoff (0.5 s, doubling, at most
    8 s between tries) for up to :attr:`retry_seconds`, on top of the driver's own retries: a
    search waits out a restart of its S3 server instead of failing. The environment variable
    ``MMMO_STORE_RETRY_SECONDS`` sets that window for every store of the process.
    """

    retry_seconds: float = 300.0

    def __init__(self, storage: str, name: str, *,
                 storage_options: dict[str, Any] | None = None) -> None:
        if not _STUDY.match(name):
            raise StudyError("study", "name is not 1-63 lowercase letters, digits and dashes "
                             "(no '/' or '..')", value=name, fix="rename it, e.g. 'fixture-demo'")
        parsed = parse_storage(storage)  # a malformed URL never becomes a local folder
        self.storage = parsed.url
        self.name = name
        if (window := _retry_window()) is not None:
            self.retry_seconds = window
        options = dict(storage_options or {})
        if self.storage.startswith(("s3://", "s3a://")):  # fail fast to _retrying, which waits
            options.setdefault("config_kwargs", STORE_S3_CONFIG)
        self.fs, root = fsspec.core.url_to_fs(self.storage, **options)
        self.root = f"{root.rstrip('/')}/{name}"
        self.url = parsed.join(name)
        self._local = "file" in _protocols(self.fs)
        self._lease_stop: threading.Event | None = None

    # ------------------------------------------------------------------ low level, atomic

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` inside the study."""
        return f"{self.root}/{rel}"

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` inside the study (with the storage's protocol)."""
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
                        "", f"study store {self.url} did not answer for "
                        f"{time.monotonic() - started:.0f} s ({what}: {cause})",
                        fix=f"bring the store back, then `mmmo resume {self.name} --storage "
                        f"{self.storage}`: every trial recorded so far is kept"
                    ) from exc
                LOG.warning("study store %s: %s failed (%s); retrying in %.1f s",
                            self.url, what, cause, delay)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (readers see old or new, never a part)."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        crash_point(f"write:{rel}:before")
        if self._local:
            Path(parent).mkdir(parents=True, exist_ok=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
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
        """Whether ``rel`` exists in the study (default: whether the study exists)."""
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

    # ------------------------------------------------------------------ spec and metadata

    def create(self, spec: SearchSpec, *, dimension_names: list[str]) -> None:
        """Start a new study: write its metadata, then the spec (whose presence marks a study)."""
        self.write_json("study.json", {
            "name": self.name,
            "mmmo_version": __version__,
            "created_at": utcnow(),
            "objectives": spec.objective_names(),
            "dimensions": dimension_names,
            "budget": spec.optimizer.budget,
        })
        self.write_bytes("spec.yaml", spec.to_yaml().encode())

    def load_spec(self) -> SearchSpec:
        """The spec the study was created with."""
        import yaml

        from mmmo import yamlio

        try:
            text = self.read_bytes("spec.yaml").decode("utf-8")
        except FileNotFoundError:
            raise StudyError("study", f"'{self.name}' does not exist at {self.storage} (no "
                             "spec.yaml)", fix="start it with `mmmo run SPEC --study NAME`, or "
                             "check --storage") from None
        try:
            data = yamlio.load(text, source=self.url_of("spec.yaml"))
        except yaml.YAMLError as exc:
            raise StudyError("study", f"its spec.yaml is not valid YAML ({type(exc).__name__})",
                             source=self.url_of("spec.yaml"),
                             fix="restore the study's spec.yaml, or start a new study") from None
        return parse_spec(data, source=self.url_of("spec.yaml"))

    def open_or_create(self, spec: SearchSpec, *, dimension_names: list[str]) -> bool:
        """Create the study, or check that ``spec`` may resume it; True if it existed.

        Raises:
            StudyError: the stored study searches something else (models, method,
                objectives or optimizer differ).
        """
        if not self.exists():
            self.create(spec, dimension_names=dimension_names)
            return False
        stored = self.load_spec()
        changed = search_fields_differ(stored, spec)
        if changed:
            raise _different(self, changed)
        return True

    def metadata(self) -> dict[str, Any]:
        """The study's ``study.json``."""
        return self.read_json("study.json")

    # ------------------------------------------------------------------ proposals and trials

    def write_proposal(self, proposal: Proposal) -> None:
        """Record a proposed batch (before it is evaluated)."""
        self.write_json(f"proposals/{proposal.iteration:04d}.json",
                        proposal.model_dump(mode="json"))

    def proposals(self) -> list[Proposal]:
        """Every proposed batch, by iteration."""
        return [Proposal.model_validate(self.read_json(f"proposals/{n}"))
                for n in self.list("proposals")]

    def write_trial(self, record: TrialRecord) -> None:
        """Record a finished trial, whole, in its own document."""
        self.write_json(f"trials/{record.trial_id}.json", record.model_dump(mode="json"))

    def trials(self) -> list[TrialRecord]:
        """Every finished trial, by number."""
        names = self.list("trials")
        if not names:
            return []
        paths = [self.path(f"trials/{n}") for n in names]
        blobs = self._retrying("reading trials", self.fs.cat, paths) if len(paths) > 1 \
            else {paths[0]: self.read_bytes(f"trials/{names[0]}")}
        return [TrialRecord.model_validate_json(blobs[p]) for p in paths]

    def pending(self) -> list[ProposedTrial]:
        """Proposed trials that have no record yet (to evaluate as proposed on resume)."""
        done = {t.number for t in self.trials()}
        return [t for p in self.proposals() for t in p.trials if t.number not in done]

    # ------------------------------------------------------------------ finished work

    def read_outcome(self, key: str) -> Any | None:
        """The stored outcome (JSON) of a benchmark or merge by its cache key, or None."""
        try:
            return self.read_json(f"outcomes/{key}.json")
        except FileNotFoundError:
            return None

    def write_outcome(self, key: str, value: Any) -> None:
        """Store a finished benchmark's (or merge's) outcome under its cache key."""
        self.write_json(f"outcomes/{key}.json", value)

    def sweep(self) -> list[str]:
        """Remove what writers killed mid-write left: staged ``.tmp-*`` files and partial
        export folders (``exports/.<id>.partial-*``). Call only while holding the lease.

        Returns:
            The removed paths, relative to the study.
        """
        if not self._local or not Path(self.root).is_dir():
            return []  # remote writes are single PUTs; remote exports are overwritten
        removed = []
        for p in sorted(Path(self.root).rglob(".*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and p.name.startswith(".tmp-"):
                p.unlink(missing_ok=True)
            elif p.is_dir() and ".partial-" in p.name and rel.startswith("exports/"):
                shutil.rmtree(p, ignore_errors=True)
            else:
                continue
            removed.append(rel)
        if removed:
            LOG.info("study %s: removed %d leftover(s) of interrupted writes: %s", self.name,
                     len(removed), ", ".join(removed[:5]))
        return removed

    # ------------------------------------------------------------------ lease

    def read_lease(self) -> Lease | None:
        """The current lease, if any."""
        try:
            return Lease(**self.read_json("lease.json"))
        except FileNotFoundError:
            return None

    def acquire_lease(self, *, ttl: float = 120.0, holder: str | None = None) -> Lease:
        """Take the study's lease, or fail if a live run holds it.

        A lease is stale when it expired (its holder stopped renewing it) or when its holder
        is a dead process on this host; a stale lease is taken over. Object stores give no
        compare-and-swap, so after writing, the lease is read back: of two racing runs the
        one that does not read itself back fails (last writer wins).

        Raises:
            LeaseHeldError: one line naming the holder and when its lease expires.
        """
        current = self.read_lease()
        me = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if current is not None and current.holder != me and not current.is_stale():
            raise _held(self.name, current)
        now = time.time()
        lease = Lease(holder=me, host=socket.gethostname(), pid=os.getpid(),
                      acquired_at=now, expires_at=now + ttl)
        self.write_json("lease.json", lease.__dict__)
        back = self.read_lease()
        if back is None or back.holder != me:
            raise _held(self.name, back or lease)
        return lease

    def renew_lease(self, lease: Lease, *, ttl: float = 120.0) -> Lease:
        """Extend ``lease``; raises LeaseHeldError if another run took the study over."""
        back = self.read_lease()
        if back is not None and back.holder != lease.holder:
            raise _held(self.name, back)
        renewed = Lease(**{**lease.__dict__, "expires_at": time.time() + ttl})
        self.write_json("lease.json", renewed.__dict__)
        return renewed

    def release_lease(self, lease: Lease) -> None:
        """Give the lease back (only if still ours)."""
        back = self.read_lease()
        if back is not None and back.holder == lease.holder:
            self._retrying("releasing the lease", self.fs.rm_file, self.path("lease.json"))

    def _release_after_failure(self, lease: Lease) -> None:
        """Try once to give the lease back while an error ends the run; never raise.

        The store may be the reason the run failed: waiting :attr:`retry_seconds` again would
        only delay the error. A lease left behind expires (or its dead holder is detected).
        """
        try:
            back = Lease(**json.loads(self.fs.cat_file(self.path("lease.json"))))
            if back.holder == lease.holder:
                self.fs.rm_file(self.path("lease.json"))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
            LOG.warning("study store %s: the lease could not be released (%s); it expires by "
                        "itself", self.url, type(exc).__name__)

    @contextmanager
    def leased(self, *, ttl: float = 120.0, heartbeat: float | None = None) -> Iterator[Lease]:
        """Hold the lease for the block, renewing it every ``heartbeat`` s (ttl/3).

        Leftovers of interrupted writes are swept once the lease is held (:meth:`sweep`).
        """
        lease = self.acquire_lease(ttl=ttl)
        self.sweep()
        stop = threading.Event()
        box = {"lease": lease}

        def beat() -> None:
            while not stop.wait(heartbeat or ttl / 3):
                try:
                    box["lease"] = self.renew_lease(box["lease"], ttl=ttl)
                except Exception:  # noqa: BLE001 - a failed renewal is retried next beat
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield lease
        except BaseException:
            stop.set()
            thread.join(timeout=5)
            self._release_after_failure(box["lease"])
            raise
        stop.set()
        thread.join(timeout=5)
        self.release_lease(box["lease"])


def check_study(spec: SearchSpec, *, storage_options: dict[str, Any] | None = None) -> None:
    """Check, read-only, that ``spec`` may start or resume its study.

    Raises:
        StudyError: the stored study searches something else.
        LeaseHeldError: a live run holds the study.
    """
    store = StudyStore(spec.storage, spec.study_name, storage_options=storage_options)
    if not store.exists():
        return
    changed = search_fields_differ(store.load_spec(), spec)
    if changed:
        raise _different(store, changed)
    lease = store.read_lease()
    if lease is not None and not lease.is_stale():
        raise _held(store.name, lease)


def _different(store: StudyStore, changed: list[str]) -> StudyError:
    return StudyError("study", f"'{store.name}' at {store.storage} was created with a "
                      f"different {', '.join(changed)}", fix="resume it with its own spec "
                      "(`mmmo resume`) or choose a new --study name")


def _held(name: str, lease: Lease) -> LeaseHeldError:
    until = dt.datetime.fromtimestamp(lease.expires_at, dt.UTC).isoformat(timespec="seconds")
    return LeaseHeldError("study", f"'{name}' is held by a running search ({lease.holder}, "
                          f"lease valid until {until})", fix="wait for it to finish, or stop "
                          "it and retry once the lease expires")


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)
