"""The Prefect executor: the engine's steps as Prefect tasks, the engine's schedule unchanged.

With ``compute.runner: threads`` every trial is a small task graph on its slot: ``merge`` ->
``evaluate-benchmark`` per objective (and document range) -> ``record``, in the flow's thread
pool, so the UI shows each benchmark as its own task run. With ``runner: dask`` a trial is
one ``trial`` task that ships the whole trial to a Dask worker (:mod:`mmmo.engine.dask`) and
records it when it returns. The driver's steps (propose, update, pick, report) are tasks too.
After every recorded trial the flow's progress and trial-table artifacts are updated.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.futures import as_completed
from prefect.utilities.annotations import allow_failure

import tasks
from mmmo.engine.executors import Executor, Running, cells_per_slot

__all__ = ["PrefectExecutor"]


class PrefectExecutor(Executor):
    """Steps as Prefect tasks of the running flow, on ``slots`` slots."""

    def __init__(self, sess: Any, *, dask: Any = None,
                 on_record: Any = None) -> None:
        search = sess.search
        slots = dask.slots if dask is not None else len(sess.slots)
        super().__init__(search.store.url, slots=slots)
        self.search, self.dask, self.on_record = search, dask, on_record

    def call(self, name: str, *args: Any) -> Any:
        """The driver's step ``name`` as a task run of the flow."""
        return tasks.DRIVER_TASKS[name](*args)

    def submit(self, item: dict[str, Any], iteration: int, slot: int) -> Running:
        """The trial's tasks on ``slot`` (or its one ``trial`` task on the Dask cluster)."""
        url = self.study_url
        if self.dask is not None:
            return Running(item, iteration, slot,
                           tasks.remote_trial.submit(url, item, iteration))
        merged = tasks.merge.submit(url, item["recipe"], slot)
        plan = self.search.trial_benchmarks(int(item.get("level", 0)))
        benches = {name: [tasks.evaluate_benchmark.submit(url, item["recipe"], name,
                                                          docs.model_dump(mode="json"), slot,
                                                          wait_for=[merged])
                          for docs in ranges]
                   for name, ranges in plan.items()}
        future = tasks.record.submit(url, item, iteration, allow_failure(merged),
                                     {k: [allow_failure(f) for f in v]
                                      for k, v in benches.items()})
        return Running(item, iteration, slot, future)

    def wait_any(self, running: Sequence[Running]) -> list[Running]:
        """Wait for the first recorded trial (and any others done by then)."""
        handles = [r.handle for r in running]
        wrapped = [getattr(h, "wrapped_future", None) for h in handles]
        if all(isinstance(w, cf.Future) for w in wrapped):
            done, _ = cf.wait(wrapped, return_when=cf.FIRST_COMPLETED)
            return [r for r, w in zip(running, wrapped, strict=True) if w in done]
        first = next(as_completed(handles))
        return [r for r in running if r.handle is first]

    def collect(self, run: Running) -> dict[str, Any]:
        """The trial's record (raises when it could not be written); artifacts updated."""
        record = run.handle.result()
        if self.on_record is not None:
            self.on_record(record)
        return record

    def cells(self, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The final table's cells as tasks: each slot's rows one after another."""
        if self.dask is not None:
            return self.dask.cells(cells)
        futures: list[Any] = [None] * len(cells)
        for slot, indices in cells_per_slot(cells, self.slots).items():
            previous: list[Any] = []
            for k in indices:
                futures[k] = tasks.cell.submit(self.study_url, dict(cells[k]), slot,
                                               wait_for=previous)
                previous = [futures[k]]
        out = []
        for future in futures:
            value = future.result(raise_on_failure=False)
            out.append(value if isinstance(value, dict) else
                       {"status": "failed", "kind": "exception", "message": str(value)})
        return out

    def export(self, recipe: Mapping[str, Any]) -> str:
        """The ``export`` task (on a Dask worker with ``runner: dask``)."""
        if self.dask is not None:
            return self.dask.export(recipe)
        return tasks.export(self.study_url, dict(recipe), 0)

    def close(self) -> None:
        """Stop the Dask cluster this run started, if any."""
        if self.dask is not None:
            self.dask.close()
