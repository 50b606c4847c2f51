"""The search engine: one set of step functions, one cache, several executors.

    steps       merge, benchmark, reference, trial, record, cell, export (:mod:`.steps`)
    keys        the one cache key of each result (:mod:`.keys`)
    outcomes    the one result store, ``<storage>/.outcomes`` (:mod:`.outcomes`)
    schedule    batch (the paper's iterations) or async (a free slot asks for one recipe)
    executors   inline, threads (:mod:`.executors`), Dask (:mod:`.dask`), Prefect (flows/)
    final       pick, final table, export, report

:func:`run` runs (or resumes) a search in this process without Prefect; the Prefect flow in
``flows/search.py`` runs the same schedule with its own executor.
"""

from __future__ import annotations

from mmmo.engine.run import executor_for, run, run_inline

__all__ = ["executor_for", "run", "run_inline"]
