"""Per-process state of running searches: open studies and their device slots.

A *slot* is one device with its evaluation backend (:mod:`mmmo.evaluation.backend`): the
resident models and what they currently serve. A slot runs one trial at a time; trials on
different slots run concurrently (threads of one process, or one Dask worker per slot). Only
recipes travel between processes: merged weights stay in the slot that made them. A step that
finds its slot serving another recipe (after a cache hit on the merge, a retry, a restarted
engine, or on a fresh worker) serves the recipe again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from mmmo.spec import SearchSpec

__all__ = ["LOADS", "Session", "Slot", "close_session", "drop_backends", "find_session",
           "make_backend", "open_session", "session", "shared_backend", "slot_devices"]

LOG = logging.getLogger("mmmo.engine")

LOADS = {"backends": 0}
"""How many slot backends this process built (each loads base and sources once)."""


def resolve_device(device: str) -> str:
    """``auto`` as the device this machine has (``cuda`` when present, else ``cpu``)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def slot_devices(spec: SearchSpec) -> list[str]:
    """The device of each slot: ``compute.max_concurrent_trials`` slots over the devices."""
    n = spec.compute.max_concurrent_trials
    device = resolve_device(spec.compute.device)
    if device == "cuda":
        import torch

        count = max(torch.cuda.device_count(), 1)
        return [f"cuda:{i % count}" for i in range(n)]
    return [device] * n


_BACKENDS: dict[str, tuple[Any, threading.RLock]] = {}
_BACKENDS_LOCK = threading.Lock()


def _backend_key(spec: SearchSpec, index: int, device: str) -> str:
    """What a backend depends on: the models, how they are held and served, and the slot."""
    import json

    data = spec.model_dump(mode="json")
    compute = {k: v for k, v in data["compute"].items()
               if k not in ("max_concurrent_trials", "runner", "runner_address")}
    return json.dumps([data["base"], data["sources"], compute, index, device], sort_keys=True)


def shared_backend(spec: SearchSpec, index: int, device: str) -> tuple[Any, threading.RLock]:
    """The backend of slot ``index`` on ``device`` and its lock, built once per process.

    Searches over the same models in one process (a resumed run, benchmark loops, a test's
    forked runs) share their slots' resident models instead of loading them again.
    """
    key = _backend_key(spec, index, device)
    with _BACKENDS_LOCK:
        found = _BACKENDS.get(key)
        if found is None or getattr(found[0], "closed", False):
            found = _BACKENDS[key] = (make_backend(spec, index, device), threading.RLock())
        return found


def drop_backends() -> None:
    """Close every backend this process built (frees models and engines)."""
    with _BACKENDS_LOCK:
        found = list(_BACKENDS.values())
        _BACKENDS.clear()
    for backend, _ in found:
        backend.close()


def make_backend(spec: SearchSpec, index: int, device: str) -> Any:
    """A new evaluation backend of slot ``index`` on ``device``, as the spec configures it
    (``hf``: a resident model in this process; ``vllm``: an engine process, logging to the
    run's log folder)."""
    import os

    from mmmo._env import cache_dir
    from mmmo.evaluation.backend import backend_for

    LOADS["backends"] += 1
    return backend_for(spec, index, device, cache_dir() / "logs" / f"engines-{os.getpid()}")


class Slot:
    """One device's backend, created on first use, and the merge info of what it serves."""

    def __init__(self, spec: SearchSpec, index: int, device: str) -> None:
        self.spec, self.index, self.device = spec, index, device
        self._lock = threading.RLock()
        self._backend: Any = None
        self._info: dict[str, Any] | None = None

    @property
    def lock(self) -> threading.RLock:
        """Held while the slot's backend serves (shared with other sessions' slots that use
        the same backend)."""
        if self._backend is None:
            self._bind()
        return self._lock

    def _bind(self) -> None:
        self._backend, self._lock = shared_backend(self.spec, self.index, self.device)

    @property
    def backend(self) -> Any:
        """The slot's backend (built, and the models loaded, on first use in this process)."""
        if self._backend is None:
            self._bind()
        return self._backend

    @property
    def loaded(self) -> bool:
        """Whether the backend (and its models) exist yet."""
        return self._backend is not None

    def serve(self, recipe: Any) -> dict[str, Any]:
        """Serve ``recipe`` (unless it is already served); its merge info."""
        with self.lock:
            backend = self.backend
            if backend.serving == recipe.recipe_id and self._info is not None and \
                    self._info.get("recipe_id") == recipe.recipe_id:
                return self._info
            self._info = None
            self._info = backend.serve_recipe(recipe)
            return self._info

    def serve_model(self, label: str, model_id: str) -> dict[str, Any]:
        """Serve the base or a source itself (``model_id`` is what ``serving`` reports)."""
        with self.lock:
            backend = self.backend
            if backend.serving == model_id and self._info is not None and \
                    self._info.get("recipe_id") == model_id:
                return self._info
            self._info = None
            self._info = backend.serve_model(label)
            return self._info

    def forget(self) -> None:
        """Forget the merge info of what is served (something else wrote the weights)."""
        with self.lock:
            self._info = None

    def recover(self) -> bool:
        """Restart the backend if it stopped answering (nothing is served afterwards); whether
        it did. Checked under the slot's lock: benchmarks failing together on one dead engine
        restart it once, the later ones find the fresh engine healthy."""
        with self.lock:
            backend = self.backend
            if backend.healthy():
                return False
            LOG.warning("slot %d: the %s backend stopped answering; restarting it", self.index,
                        backend.name)
            self._info = None
            backend.restart()
            return True

    def close(self) -> None:
        """Let go of the backend (it stays built for other searches of this process; see
        :func:`drop_backends`)."""
        self._backend, self._info = None, None


@dataclass
class Session:
    """An open study in this process, with its slots."""

    search: Any
    slots: list[Slot] = field(default_factory=list)

    def slot(self, index: int) -> Slot:
        """Slot ``index`` (modulo the number of slots)."""
        return self.slots[index % len(self.slots)]

    def close(self) -> None:
        """Free every slot."""
        for slot in self.slots:
            slot.close()


_SESSIONS: dict[str, Session] = {}
_LOCK = threading.Lock()


def open_session(spec: SearchSpec, *, preflight: bool = True,
                 devices: list[str] | None = None) -> Session:
    """Open (or create) the spec's study in this process and register it.

    Args:
        spec: The search.
        preflight: Run the cheap input checks first.
        devices: The slots' devices (default :func:`slot_devices`; a Dask worker has one).
    """
    from mmmo.search import Search

    search = Search.open(spec, preflight=preflight)
    devices = devices or slot_devices(spec)
    sess = Session(search, [Slot(spec, i, d) for i, d in enumerate(devices)])
    with _LOCK:
        old = _SESSIONS.get(search.store.url)
        _SESSIONS[search.store.url] = sess
    if old is not None and old is not sess:
        old.close()
    return sess


def find_session(study_url: str) -> Session | None:
    """The session of ``study_url`` open in this process, if any."""
    with _LOCK:
        return _SESSIONS.get(study_url)


def session(study_url: str, *, devices: list[str] | None = None) -> Session:
    """The session of ``study_url``; re-opened from its store on a fresh worker process."""
    with _LOCK:
        found = _SESSIONS.get(study_url)
    if found is not None:
        return found
    from mmmo.study import StudyStore

    storage, name = study_url.rstrip("/").rsplit("/", 1)
    spec = StudyStore(storage, name).load_spec().with_overrides(storage=storage, study=name)
    return open_session(spec, preflight=False, devices=devices)


def close_session(study_url: str) -> None:
    """Forget the session of ``study_url`` and free its slots."""
    with _LOCK:
        found = _SESSIONS.pop(study_url, None)
    if found is not None:
        found.close()
