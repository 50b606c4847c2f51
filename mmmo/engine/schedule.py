"""The search loop, once for every executor: which trial runs on which slot, and when.

Two schedules (``optimizer.schedule``):

- ``batch`` (the paper's, the default): iteration by iteration, the optimizer proposes a
  batch (the initial design, then ``batch_size`` recipes), every recipe of it is evaluated
  (spread over the slots, a new one started whenever a slot frees), then the surrogate is
  updated and the next batch proposed.
- ``async``: whenever a slot frees, the optimizer is asked for ONE recipe with every recipe in
  flight as a pending point, so no slot idles while the GPs fit or the slowest trial of a
  batch finishes. Each proposal is written before it is evaluated; the budget is exact; a
  resumed search evaluates the proposals it finds unfinished as proposed and never proposes
  them again. Trials are told to the optimizer in the order they finished.

The executor (:mod:`mmmo.engine.executors`) runs the driver-side steps (propose, update) and
the trials; this module decides the order. A trial result that cannot be recorded stops the
search with its error, after the trials already running were collected (nothing finished is
lost).
"""

from __future__ import annotations

import logging
from typing import Any

from mmmo.hooks import crash_point

__all__ = ["drive"]

LOG = logging.getLogger("mmmo.engine")


def drive(search: Any, executor: Any, *, max_iterations: int | None = None) -> bool:
    """Run (or resume) ``search`` on ``executor`` until its budget is spent.

    Args:
        search: The open :class:`~mmmo.search.Search`.
        executor: Where steps and trials run (:class:`~mmmo.engine.executors.Executor`).
        max_iterations: Stop after this many iterations of this run (``async``: after this
            many times ``batch_size`` new recipes); the rest resumes later.

    Returns:
        True when every trial of the budget is recorded.
    """
    search.outcomes.remove_stale()  # what writers killed mid-write left in the result store
    if search.spec.optimizer.schedule == "async":
        return _drive_async(search, executor, max_iterations=max_iterations)
    return _drive_batch(search, executor, max_iterations=max_iterations)


def _drive_batch(search: Any, executor: Any, *, max_iterations: int | None) -> bool:
    url = search.store.url
    ran = 0
    for batch in search.batches:
        done = {t.number for t in search.store.trials()}
        if set(range(batch.first, batch.first + batch.size)) <= done:
            _promote(search, executor, batch.iteration)  # a kill may have cut them off
            if executor.call("catch-up", url, batch.iteration):  # killed before its update
                crash_point(f"iteration:{batch.iteration}:told")
            continue
        if max_iterations is not None and ran >= max_iterations:
            LOG.info("stopping after %d iteration(s) as asked", ran)
            return False
        proposal = executor.call("propose", url, batch.iteration)
        work = [(t, proposal["iteration"]) for t in proposal["trials"]
                if t["number"] not in done]
        _run(executor, work)
        _promote(search, executor, batch.iteration)
        executor.call("update-surrogate", url, batch.iteration)
        crash_point(f"iteration:{batch.iteration}:told")
        ran += 1
    return True


def _promote(search: Any, executor: Any, iteration: int) -> None:
    """Multi-fidelity, ``batch``: the promotions of ``iteration`` (stored unfinished ones
    first), round after round until the rule moves nothing up (:mod:`mmmo.fidelity`)."""
    if not search.levels.enabled:
        return
    url = search.store.url
    while True:
        levels = {t.number: t.level for t in search.store.trials()}
        work = [(t.model_dump(mode="json"), p.iteration) for p in search.store.proposals()
                if p.kind == "promote" and p.iteration == iteration for t in p.trials
                if levels.get(t.number, -1) < t.level]
        if not work:
            proposal = executor.call("propose-promotions", url, iteration, [])
            if proposal is None:
                return
            work = [(t, proposal["iteration"]) for t in proposal["trials"]]
        _run(executor, work)


def _drive_async(search: Any, executor: Any, *, max_iterations: int | None) -> bool:
    url = search.store.url
    spec = search.spec.optimizer
    proposals = search.store.proposals()
    levels = {t.number: t.level for t in search.store.trials()}
    queue = [(t.model_dump(mode="json"), p.iteration) for p in proposals for t in p.trials
             if levels.get(t.number, -1) < t.level]  # proposed before a kill: as proposed
    proposed = len({t.number for p in proposals if p.kind == "new" for t in p.trials})
    limit = None if max_iterations is None else max_iterations * spec.batch_size
    asked = 0

    def next_work(running: list[Any]) -> tuple[dict[str, Any], int] | None:
        nonlocal proposed, asked
        if queue:
            return queue.pop(0)
        if search.levels.enabled:  # promotions first: a slot never waits for a new recipe
            promoted = executor.call("propose-promotions", url, None,
                                     [r.item["number"] for r in running])
            if promoted is not None:
                queue.extend((t, promoted["iteration"]) for t in promoted["trials"])
                return queue.pop(0)
        if proposed >= spec.budget or (limit is not None and asked >= limit):
            return None
        proposal = executor.call("propose-next", url, [r.item["number"] for r in running])
        proposed, asked = proposed + 1, asked + 1
        return proposal["trials"][0], proposal["iteration"]

    _run(executor, [], next_work=next_work,
         after=lambda: executor.call("update-surrogate", url, None))
    complete = proposed >= spec.budget and not queue
    if not complete:
        LOG.info("stopping after %d new trial(s) as asked", asked)
    return complete


def _run(executor: Any, work: list[tuple[dict[str, Any], int]], *,
         next_work: Any = None, after: Any = None) -> None:
    """Run ``work`` (and whatever ``next_work`` hands out) on the executor's free slots."""
    queue = list(work)
    free = list(range(executor.slots))
    running: list[Any] = []
    error: BaseException | None = None
    while True:
        while free and error is None:
            nxt = queue.pop(0) if queue else (next_work(running) if next_work else None)
            if nxt is None:
                break
            item, iteration = nxt
            running.append(executor.submit(item, iteration, free.pop(0)))
        if not running:
            break
        for run in executor.wait_any(running):
            running.remove(run)
            free.append(run.slot)
            try:
                executor.collect(run)
                if after is not None and error is None:
                    after()
            except Exception as exc:  # noqa: BLE001 - the others are collected first
                LOG.error("trial %s could not be recorded: %s", run.item["number"], exc)
                error = error or exc
    if error is not None:
        raise error
