"""Executors: where the engine's steps run. Every executor runs the same step functions.

An executor has ``slots`` device slots and runs

- the driver's steps (:data:`~mmmo.engine.steps.DRIVER_STEPS`: propose, update, pick, report)
  through :meth:`Executor.call`;
- trials through :meth:`Executor.submit` / :meth:`Executor.wait_any` / :meth:`Executor.collect`
  (merge + benchmarks on a slot, then the record, written by the driver);
- the final table's cells and the export.

:class:`InlineExecutor` runs everything in this process, one step after another on one slot;
:class:`ThreadExecutor` runs one trial per slot at a time in threads of this process. The
Prefect executor (``flows/executor.py``) runs the same steps as Prefect tasks, and the Dask
executor (:mod:`mmmo.engine.dask`) ships trials to the workers of a Dask cluster.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmmo.engine import steps

__all__ = ["Executor", "InlineExecutor", "Running", "ThreadExecutor", "cells_per_slot"]


@dataclass(eq=False)
class Running:
    """A trial submitted to a slot."""

    item: dict[str, Any]
    """The proposed trial (JSON of :class:`~mmmo.study.ProposedTrial`)."""
    iteration: int
    slot: int
    handle: Any
    """The executor's own future of it."""


class Executor:
    """Runs steps on ``slots`` device slots of the study ``study_url`` (in this process)."""

    slots: int = 1
    concurrent: bool = True
    """Whether trials run beside the driver (an ``async`` search then asks ahead)."""

    def __init__(self, study_url: str, *, slots: int = 1) -> None:
        self.study_url, self.slots = study_url, slots

    def call(self, name: str, *args: Any) -> Any:
        """Run the driver's step ``name`` (a key of :data:`~mmmo.engine.steps.DRIVER_STEPS`)."""
        return steps.DRIVER_STEPS[name](*args)

    def submit(self, item: dict[str, Any], iteration: int, slot: int) -> Running:
        """Start a trial on ``slot``."""
        raise NotImplementedError

    def wait_any(self, running: Sequence[Running]) -> list[Running]:
        """Wait until at least one of ``running`` is done; the done ones."""
        done, _ = cf.wait([r.handle for r in running], return_when=cf.FIRST_COMPLETED)
        return [r for r in running if r.handle in done]

    def collect(self, run: Running) -> dict[str, Any]:
        """Record a done trial; its record (raises when it could not be written)."""
        return steps.record_step(self.study_url, run.item, run.iteration, run.handle.result())

    def cells(self, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The final table's cells (one after another here), in order."""
        return [steps.cell_step(self.study_url, cell, 0) for cell in cells]

    def export(self, recipe: Mapping[str, Any]) -> str:
        """Export ``recipe`` into the study; its URL."""
        return steps.export_step(self.study_url, recipe, 0)

    def close(self) -> None:
        """Free what the executor holds."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """One slot, every step in this thread, one after another."""

    concurrent = False

    def submit(self, item: dict[str, Any], iteration: int, slot: int) -> Running:
        """Run the trial now; a done future."""
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(steps.trial_step(self.study_url, item, slot))
        except BaseException as exc:
            future.set_exception(exc)
        return Running(item, iteration, slot, future)


class ThreadExecutor(Executor):
    """``slots`` slots in threads of this process (each with its own resident models)."""

    def __init__(self, study_url: str, *, slots: int) -> None:
        super().__init__(study_url, slots=slots)
        self.pool = cf.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slot")

    def submit(self, item: dict[str, Any], iteration: int, slot: int) -> Running:
        """Start the trial in a slot thread."""
        future = self.pool.submit(steps.trial_step, self.study_url, item, slot)
        return Running(item, iteration, slot, future)

    def cells(self, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Cells row by row on the slots: a row's cells on one slot (they share its model)."""
        per_slot = cells_per_slot(cells, self.slots)

        def run(slot: int) -> list[dict[str, Any]]:
            return [steps.cell_step(self.study_url, cells[k], slot) for k in per_slot[slot]]

        futures = {slot: self.pool.submit(run, slot) for slot in per_slot}
        out: list[dict[str, Any] | None] = [None] * len(cells)
        for slot, future in futures.items():
            for k, value in zip(per_slot[slot], future.result(), strict=True):
                out[k] = value
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the slot threads."""
        self.pool.shutdown(wait=True)


def cells_per_slot(cells: Sequence[Mapping[str, Any]], slots: int) -> dict[int, list[int]]:
    """Cell indices per slot: whole rows (which share a served model) dealt out in turn."""
    rows: dict[str, list[int]] = {}
    for k, cell in enumerate(cells):
        rows.setdefault(str(cell["row"]), []).append(k)
    out: dict[int, list[int]] = {}
    for i, indices in enumerate(rows.values()):
        out.setdefault(i % slots, []).extend(indices)
    return out
