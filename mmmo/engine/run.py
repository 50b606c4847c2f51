"""Run (or resume) a search in this process, without Prefect, on any executor."""

from __future__ import annotations

from typing import Any

from mmmo.engine.executors import Executor, InlineExecutor, ThreadExecutor
from mmmo.engine.final import finish as finish_search
from mmmo.engine.schedule import drive
from mmmo.engine.slots import Session, open_session
from mmmo.spec import SearchSpec

__all__ = ["executor_for", "run", "run_inline"]


def executor_for(sess: Session, *, inline: bool = False) -> Executor:
    """The executor the spec asks for: Dask workers, or threads (one per slot); ``inline``
    runs everything in this thread on one slot."""
    spec = sess.search.spec
    url = sess.search.store.url
    if inline:
        return InlineExecutor(url)
    if spec.compute.runner == "dask":
        from mmmo.engine.dask import DaskExecutor

        return DaskExecutor.from_spec(spec, url)
    return ThreadExecutor(url, slots=len(sess.slots))


def _session(spec: SearchSpec | Any, preflight: bool) -> Session:
    from mmmo.engine.slots import _LOCK, _SESSIONS
    from mmmo.search import Search

    if isinstance(spec, Search):
        spec = spec.spec
    url = f"{spec.storage.rstrip('/')}/{spec.study_name}"
    with _LOCK:
        found = _SESSIONS.get(url)
    if found is not None and found.search.spec == spec:
        return found
    return open_session(spec, preflight=preflight)


def run(spec: SearchSpec | Any, *, executor: Executor | None = None, inline: bool = False,
        max_iterations: int | None = None, finish: bool = True,
        preflight: bool = True) -> dict[str, Any]:
    """Run or resume the spec's search, holding the study's lease meanwhile.

    Args:
        spec: The search (or an open :class:`~mmmo.search.Search`).
        executor: Where to run (default: :func:`executor_for` the spec).
        inline: Run everything in this thread, on one slot.
        max_iterations: Stop after this many iterations of this run.
        finish: Once the budget is spent, also pick, score the final table, export the pick
            and write the report.
        preflight: Check the inputs first (a session already open is re-used as it is).

    Returns:
        ``{"study", "complete", ...}``; with ``finish``, also what :func:`finish` returns.
    """
    sess = _session(spec, preflight)
    search = sess.search
    with search.store.leased():
        ex = executor or executor_for(sess, inline=inline)
        try:
            done = drive(search, ex, max_iterations=max_iterations)
            if not done or not finish:
                return {"study": search.store.url, "complete": done}
            return finish_search(search, ex)
        finally:
            if executor is None:
                ex.close()


def run_inline(spec: SearchSpec | Any, *, max_iterations: int | None = None,
               finish: bool = False, preflight: bool = True) -> bool:
    """Run or resume a search in this thread, one step after another on one slot.

    Returns:
        True when the budget is spent (and, with ``finish``, the study finished).
    """
    out = run(spec, inline=True, max_iterations=max_iterations, finish=finish,
              preflight=preflight)
    return bool(out["complete"])
