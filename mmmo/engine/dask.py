"""Distributed slots on a Dask cluster: one slot per worker, one trial per GPU.

Each worker process holds its slot's resident models (and, with ``compute.backend: vllm``, its
engine), loaded once per worker on its first trial. A trial (its merge and every benchmark)
runs as ONE Dask task on one worker, so the merged weights never leave the worker that made
them; only recipes travel. Every trial task asks for the abstract resource ``GPU: 1``, and
every worker offers one (``dask worker --resources GPU=1``, one worker per GPU), so the
scheduler never runs two trials on one device. When a worker dies mid-trial, Dask re-runs the
task on another worker (up to ``distributed.scheduler.allowed-failures`` times); what the dead
worker had finished is in the result store and is not computed again, and only the driver
writes trial records, so nothing is recorded twice.

``compute.runner_address`` attaches to a running scheduler (``tcp://host:8786``); unset, a
``distributed.LocalCluster`` of ``max_concurrent_trials`` worker processes is started for the
run (its workers exit with this process).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from mmmo.engine import steps
from mmmo.engine.executors import Executor, Running, cells_per_slot

__all__ = ["RESOURCE", "DaskExecutor", "trial_on_cluster", "worker_device"]

LOG = logging.getLogger("mmmo.engine")

RESOURCE = "GPU"
"""The abstract resource every trial takes one of (workers offer one each)."""


def worker_device(spec_device: str) -> str:
    """This worker's device: a CUDA worker with several visible GPUs whose name is a number
    uses GPU ``name % count`` (a LocalCluster's workers are named 0, 1, ...); else ``cuda:0``
    (one GPU per worker through ``CUDA_VISIBLE_DEVICES``), or the spec's device."""
    from mmmo.engine.slots import resolve_device

    device = resolve_device(spec_device)
    if not device.startswith("cuda") or ":" in device:
        return device
    import torch

    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) % count if count > 1 and str(name).isdigit() else 0
    except (ValueError, ImportError):
        index = 0
    return f"cuda:{index}"


def _worker_session(study_url: str) -> Any:
    from mmmo.engine.slots import find_session, session
    from mmmo.study import StudyStore

    found = find_session(study_url)
    if found is not None:
        return found
    storage, name = study_url.rstrip("/").rsplit("/", 1)
    device = worker_device(StudyStore(storage, name).load_spec().compute.device)
    return session(study_url, devices=[device])


def remote_trial(study_url: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """A trial on this worker's slot (runs in a worker process)."""
    _worker_session(study_url)
    return steps.trial_step(study_url, item, 0)


def remote_cells(study_url: str, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cells of the final table on this worker's slot, one after another."""
    _worker_session(study_url)
    return [steps.cell_step(study_url, cell, 0) for cell in cells]


def remote_export(study_url: str, recipe: Mapping[str, Any]) -> str:
    """Export a recipe from this worker's slot."""
    _worker_session(study_url)
    return steps.export_step(study_url, recipe, 0)


def worker_loads() -> dict[str, Any]:
    """How many slot backends this worker built, and its pid (for tests and logs)."""
    from mmmo.engine.slots import LOADS

    return {"pid": os.getpid(), **LOADS}


_OPEN: dict[str, DaskExecutor] = {}


def trial_on_cluster(study_url: str, item: Mapping[str, Any], iteration: int) -> dict[str, Any]:
    """Run a trial on the cluster of the study's open :class:`DaskExecutor`, wait, record it."""
    executor = _OPEN[study_url]
    return executor.collect(executor.submit(dict(item), iteration, 0))


class DaskExecutor(Executor):
    """Trials on the workers of a Dask cluster; the driver steps and records here."""

    def __init__(self, study_url: str, *, slots: int, address: str | None = None) -> None:
        super().__init__(study_url, slots=slots)
        from distributed import Client, LocalCluster

        self.cluster = None
        if address is None:
            self.cluster = LocalCluster(n_workers=slots, threads_per_worker=1, processes=True,
                                        resources={RESOURCE: 1}, dashboard_address=None,
                                        silence_logs=logging.ERROR)
            address = self.cluster.scheduler_address
        self.client = Client(address, set_as_default=False)
        _OPEN[study_url] = self
        LOG.info("dask: %s, %d slot(s)", address, slots)

    @classmethod
    def from_spec(cls, spec: Any, study_url: str) -> DaskExecutor:
        """The executor ``compute.runner_address`` / ``max_concurrent_trials`` describe."""
        return cls(study_url, slots=spec.compute.max_concurrent_trials,
                   address=spec.compute.runner_address)

    def submit(self, item: dict[str, Any], iteration: int, slot: int) -> Running:
        """Ship the trial to a free worker (one trial per worker: its ``GPU`` resource)."""
        future = self.client.submit(remote_trial, self.study_url, item, pure=False,
                                    resources={RESOURCE: 1},
                                    key=f"trial-{item['number']}-{item.get('level', 0)}-"
                                        f"{os.urandom(4).hex()}")
        return Running(item, iteration, slot, future)

    def wait_any(self, running: Sequence[Running]) -> list[Running]:
        """Wait until a trial finished (or failed for good) on the cluster."""
        event = threading.Event()
        for run in running:
            run.handle.add_done_callback(lambda _future: event.set())
        while not (done := [r for r in running if r.handle.done()]):
            event.wait(5.0)
            event.clear()
        return done

    def collect(self, run: Running) -> dict[str, Any]:
        """Record a finished trial here (a trial lost with its workers is a failed trial)."""
        try:
            result = run.handle.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after allowed failures
            LOG.error("trial %s was lost on the cluster: %s", run.item["number"], exc)
            result = steps.collect(exc, {})
        return steps.record_step(self.study_url, run.item, run.iteration, result)

    def cells(self, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The final table's cells, whole rows per worker."""
        per_slot = cells_per_slot(cells, self.slots)
        futures = {slot: self.client.submit(remote_cells, self.study_url,
                                            [cells[k] for k in indices], pure=False,
                                            resources={RESOURCE: 1})
                   for slot, indices in per_slot.items()}
        out: list[dict[str, Any] | None] = [None] * len(cells)
        for slot, future in futures.items():
            for k, value in zip(per_slot[slot], future.result(), strict=True):
                out[k] = value
        return out  # type: ignore[return-value]

    def export(self, recipe: Mapping[str, Any]) -> str:
        """Export on a worker (it has the models resident)."""
        return self.client.submit(remote_export, self.study_url, dict(recipe), pure=False,
                                  resources={RESOURCE: 1}).result()

    def loads(self) -> dict[str, dict[str, Any]]:
        """Per worker address: its pid and how many slot backends it built."""
        return self.client.run(worker_loads)

    def close(self) -> None:
        """Disconnect; stop the local cluster if this executor started it."""
        if _OPEN.get(self.study_url) is self:
            del _OPEN[self.study_url]
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
