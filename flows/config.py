"""How the spec configures the Prefect layer: result storage, retries, task runner."""

from __future__ import annotations

import hashlib
from typing import Any

from mmmo.spec import SearchSpec
from tasks import evaluate_benchmark, evaluate_reference, merge

__all__ = ["configured", "result_storage", "task_runner"]

RESULTS_DIR = ".prefect-results"


def result_storage(storage: str) -> Any:
    """Where cached task results live: ``<storage>/.prefect-results`` (shared by studies).

    Local storage is a plain path; remote storage (s3://, ...) is a RemoteFileSystem block,
    saved server-side under a name derived from the URL. Credentials are not stored in the
    block: fsspec reads them from the worker's environment (AWS_* variables for S3).
    """
    from mmmo.storage import parse_storage

    parsed = parse_storage(storage)  # a malformed URL is refused, never a local folder
    if parsed.local:
        return parsed.local_path.resolve() / RESULTS_DIR
    from prefect.filesystems import RemoteFileSystem

    name = "mmmo-results-" + hashlib.sha256(storage.encode()).hexdigest()[:12]
    try:
        return RemoteFileSystem.load(name)
    except ValueError:
        block = RemoteFileSystem(basepath=parsed.join(RESULTS_DIR))
        block.save(name, overwrite=True)
        return block


def configured(spec: SearchSpec) -> tuple[Any, Any]:
    """``merge`` and ``evaluate_benchmark`` with the spec's result storage and retries."""
    storage = result_storage(spec.storage)
    retry = spec.evaluation
    return (merge.with_options(result_storage=storage),
            evaluate_benchmark.with_options(result_storage=storage, retries=retry.retries,
                                            retry_delay_seconds=retry.retry_delay_seconds))


def configured_reference(spec: SearchSpec) -> Any:
    """``evaluate_reference`` with the spec's result storage and retries."""
    retry = spec.evaluation
    return evaluate_reference.with_options(result_storage=result_storage(spec.storage),
                                           retries=retry.retries,
                                           retry_delay_seconds=retry.retry_delay_seconds)


def task_runner(spec: SearchSpec) -> Any:
    """The iteration subflow's task runner: threads (default), Ray or Dask.

    Threads: ``max_concurrent_trials`` slots, each trial's objectives evaluated in parallel.
    Ray / Dask: trials are shipped to workers as recipes (merged weights never leave the
    worker that made them); each worker re-opens the study from its store.
    """
    c = spec.compute
    if c.runner == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=c.runner_address) if c.runner_address else RayTaskRunner()
    if c.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if c.runner_address:
            return DaskTaskRunner(address=c.runner_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": c.max_concurrent_trials,
                                              "threads_per_worker": 1})
    from prefect.task_runners import ThreadPoolTaskRunner

    width = c.max_concurrent_trials * (len(spec.objectives.tasks) + 2)
    return ThreadPoolTaskRunner(max_workers=width)
