"""The study store: the single source of truth of a search, on any fsspec filesystem.

Layout under ``<storage>/<study>/``::

    spec.yaml                 the spec the study was created with (every default written out)
    study.json                objective names, search-space names, mm-mo version, created time
    lease.json                which run holds the study, until when (heartbeat-renewed)
    proposals/0003.json       the 4th proposal (a batch iteration's recipes, one recipe of an
                              asynchronous search, or promotions to a higher fidelity level),
                              written BEFORE any of it is evaluated
    trials/0017.json          one whole trial: recipe, x, objectives, stderrs, status, error,
                              timings, per-benchmark lm-eval results, the order it finished in
    optimizer.json            the optimizer's state after the last update (for inspection;
                              resuming replays trials, so the store alone is enough)
    final.json                the pick, the score table and the export, once finished
    exports/<recipe_id>/      exported HF folders + mergekit YAML
    reports/                  report.md / report.html / PNGs

Every write is atomic: a local file is written to a temporary name and renamed over the
target; on object stores (s3://) one object is one PUT, which readers see whole or not at all.
A record is therefore never seen half-written, and a crash leaves at most a stray temp file
(or a partial export folder), which the next run removes when it takes the lease
(:meth:`StudyStore.sweep`).

Finished benchmarks and merge infos live beside the studies, in the result store
``<storage>/.outcomes/`` (:mod:`mmmo.engine.outcomes`), shared by every study of the storage.

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
from pathlib import Path
from typing import Any

from mmmo import __version__
from mmmo.errors import LeaseHeldError, StudyError
from mmmo.fsfolder import FsFolder
from mmmo.lease import Lease
from mmmo.spec import _STUDY, SearchSpec, parse_spec
from mmmo.storage import PROBE_S3_CONFIG, check_storage, parse_storage
from mmmo.study_records import Proposal, ProposedTrial, TrialRecord, utcnow

__all__ = ["PROBE_S3_CONFIG", "Lease", "Proposal", "StudyStore", "TrialRecord", "check_storage",
           "check_study", "search_fields_differ"]


LOG = logging.getLogger(__name__)

#: Spec sections that define the search itself: a resumed study must not change them.
SEARCH_FIELDS = ("base", "sources", "merge", "objectives", "optimizer")


def search_fields_differ(a: SearchSpec, b: SearchSpec) -> list[str]:
    """Names of the search-defining spec sections that differ between ``a`` and ``b``."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [k for k in SEARCH_FIELDS if da[k] != db[k]]


class StudyStore(FsFolder):
    """Read and write one study under ``<storage>/<name>/`` through fsspec.

    Remote calls are retried while the store does not answer (:class:`~mmmo.fsfolder.FsFolder`).
    """

    kind = "study store"

    def __init__(self, storage: str, name: str, *,
                 storage_options: dict[str, Any] | None = None) -> None:
        if not _STUDY.match(name):
            raise StudyError("study", "name is not 1-63 lowercase letters, digits and dashes "
                             "(no '/' or '..')", value=name, fix="rename it, e.g. 'fixture-demo'")
        parsed = parse_storage(storage)  # a malformed URL never becomes a local folder
        self.storage = parsed.url
        self.name = name
        super().__init__(parsed.join(name), storage_options=storage_options)

    def resume_hint(self) -> str:
        """Resume the study once its store answers again."""
        return (f"bring the store back, then `mmmo resume {self.name} --storage "
                f"{self.storage}`: every trial recorded so far is kept")

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
        """Record a proposal (before any of it is evaluated)."""
        self.write_json(f"proposals/{proposal.sequence:04d}.json",
                        proposal.model_dump(mode="json"))

    def proposals(self) -> list[Proposal]:
        """Every proposal, in sequence order."""
        names = self.list("proposals")
        if not names:
            return []
        paths = [self.path(f"proposals/{n}") for n in names]
        blobs = self._retrying("reading proposals", self.fs.cat, paths) if len(paths) > 1 \
            else {paths[0]: self.read_bytes(f"proposals/{names[0]}")}
        return [Proposal.model_validate_json(blobs[p]) for p in paths]

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

    def pending(self, trials: list[TrialRecord] | None = None,
                proposals: list[Proposal] | None = None) -> list[ProposedTrial]:
        """Proposed work with no record at its level yet (to evaluate as proposed on resume),
        in proposal order."""
        trials = self.trials() if trials is None else trials
        levels = {t.number: t.level for t in trials}
        proposals = self.proposals() if proposals is None else proposals
        return [t for p in proposals for t in p.trials if levels.get(t.number, -1) < t.level]

    # ------------------------------------------------------------------ finished work

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


