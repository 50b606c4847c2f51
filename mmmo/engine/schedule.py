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
  them again. Trials are told to the optimizer in the order they finished. With
  ``optimizer.ask_ahead`` (the default) the next recipe is asked for while every slot is
  busy, so a slot that frees starts it at once (the trials in flight, the one about to
  finish included, are its pending points).

The executor (:mod:`mmmo.engine.executors`) runs the driver-side steps (propose, update) and
the trials; this module decides the order. A trial result that cannot be recorded stops the
search with its error, after the trials already running were collected (nothing finished is
lost).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
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
    driver = _Driver(executor, threaded=spec.ask_ahead and executor.concurrent)
    ahead: cf.Future[Any] | None = None  # the next recipe, asked while every slot is busy
    updates: list[cf.Future[Any]] = []

    def ask(running: list[Any]) -> cf.Future[Any] | None:
        nonlocal proposed, asked
        if proposed >= spec.budget or (limit is not None and asked >= limit):
            return None
        proposed, asked = proposed + 1, asked + 1
        return driver.submit("propose-next", url, [r.item["number"] for r in running])

    def next_work(running: list[Any]) -> tuple[dict[str, Any], int] | None:
        nonlocal ahead
        if queue:
            return queue.pop(0)
        if search.levels.enabled:  # promotions first: a slot never waits for a new recipe
            promoted = driver.call("propose-promotions", url, None,
                                   [r.item["number"] for r in running])
            if promoted is not None:
                queue.extend((t, promoted["iteration"]) for t in promoted["trials"])
                return queue.pop(0)
        future = ahead if ahead is not None else ask(running)
        ahead = None
        if future is None:
            return None
        proposal = future.result()
        return proposal["trials"][0], proposal["iteration"]

    def busy(running: list[Any]) -> None:
        nonlocal ahead
        if driver.threaded and ahead is None and not queue:
            ahead = ask(running)

    def after() -> None:
        for done in [u for u in updates if u.done()]:
            updates.remove(done)
            done.result()  # an update that failed stops the search, as when it ran inline
        updates.append(driver.submit("update-surrogate", url, None))

    try:
        _run(executor, [], next_work=next_work, after=after, busy=busy)
        for update in updates:
            update.result()
    finally:
        driver.close()  # a recipe asked ahead when a trial's record failed stays proposed
    complete = proposed >= spec.budget and not queue
    if not complete:
        LOG.info("stopping after %d new trial(s) as asked", asked)
    return complete


class _Driver:
    """The driver's steps of an ``async`` search, one at a time. ``threaded``: in one thread
    beside the slots (each in its caller's context, so that a Prefect task run belongs to the
    flow run), in the order they were submitted; else at once, in the calling thread."""

    def __init__(self, executor: Any, *, threaded: bool) -> None:
        self.executor = executor
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="driver") \
            if threaded else None

    @property
    def threaded(self) -> bool:
        """Whether the steps run in the driver's own thread."""
        return self.pool is not None

    def submit(self, name: str, *args: Any) -> cf.Future[Any]:
        """Run the step ``name`` (after those submitted before it); its future."""
        if self.pool is not None:
            context = contextvars.copy_context()
            return self.pool.submit(context.run, self.executor.call, name, *args)
        future: cf.Future[Any] = cf.Future()
        future.set_result(self.executor.call(name, *args))  # an error raises here, at once
        return future

    def call(self, name: str, *args: Any) -> Any:
        """Run the step ``name`` and wait for its result."""
        return self.submit(name, *args).result()

    def close(self) -> None:
        """Wait for the steps still running."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _run(executor: Any, work: list[tuple[dict[str, Any], int]], *,
         next_work: Any = None, after: Any = None, busy: Any = None) -> None:
    """Run ``work`` (and whatever ``next_work`` hands out) on the executor's free slots;
    ``busy(running)`` is called whenever every slot is taken."""
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
        if busy is not None and not free and error is None:
            busy(running)
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
