"""The MM-MO search as a Prefect flow: the engine's schedule, its steps as tasks.

    validate -> open or resume the study (lease)
    -> the engine's schedule (batch iterations, or asynchronous slots):
           propose -> per trial on a free slot: merge -> evaluate-benchmark per objective
           -> record  [-> update-surrogate after each batch]
    -> pick -> final table (base, sources, baselines, pick) -> export -> report

The study store is the source of truth and the engine's result store the only cache, so
re-running the flow on a study resumes it; everything the flow does is an
:mod:`mmmo.engine` step, the same ones the inline and Dask executors run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner

from flows.executor import PrefectExecutor
from mmmo.engine.final import finish
from mmmo.engine.schedule import drive
from mmmo.engine.slots import Session, open_session
from mmmo.spec import SearchSpec, load_spec

__all__ = ["merge_search", "resume_search"]

# Enough threads for every slot's benchmarks plus its merge and record at once.
_RUNNER_WIDTH = 64


@flow(name="merge-search", task_runner=ThreadPoolTaskRunner(max_workers=_RUNNER_WIDTH))
def merge_search(spec: str, study: str | None = None, storage: str | None = None,
                 max_iterations: int | None = None) -> dict[str, Any]:
    """Search merge recipes as SPEC describes (a YAML path or URL); resumes STUDY if it exists.

    Args:
        spec: Path or URL (file://, s3://, ...) of the search spec YAML.
        study: Study name; overrides the spec's ``study``.
        storage: Storage URL of studies; overrides the spec's ``storage``.
        max_iterations: Stop after this many iterations of this run (the rest resumes later).
    """
    search_spec = _validated(load_spec(spec), study=study, storage=storage)
    sess = open_session(search_spec)
    store = sess.search.store
    with store.leased(), _executor(sess) as executor:
        if not drive(sess.search, executor, max_iterations=max_iterations):
            return {"study": store.url, "complete": False}
        result = finish(sess.search, executor)
        create_markdown_artifact(result.pop("markdown"), key=_key(store.name, "report"),
                                 description=f"mm-mo report of study {store.name}")
        return result


@flow(name="resume-search")
def resume_search(study: str, storage: str = "./studies") -> dict[str, Any]:
    """Resume (or finish) the study STUDY under STORAGE with its own stored spec."""
    from mmmo.study import StudyStore

    store = StudyStore(storage, study)
    store.load_spec()  # fails early, with a clear error, when the study does not exist
    return merge_search(spec=store.url_of("spec.yaml"), study=study, storage=storage)


def _executor(sess: Session) -> PrefectExecutor:
    """The run's executor, with its artifacts: progress and the trial table."""
    store = sess.search.store
    progress = create_progress_artifact(progress=_percent(sess), key=_key(store.name,
                                        "progress"), description="trials done / budget")

    def on_record(_record: dict[str, Any]) -> None:
        update_progress_artifact(progress, _percent(sess))
        _trial_table(sess)

    dask = None
    if sess.search.spec.compute.runner == "dask":
        from mmmo.engine.dask import DaskExecutor

        dask = DaskExecutor.from_spec(sess.search.spec, store.url)
    return PrefectExecutor(sess, dask=dask, on_record=on_record)


def _validated(spec: SearchSpec, *, study: str | None, storage: str | None) -> SearchSpec:
    return spec.with_overrides(study=study, storage=storage) if study or storage else spec


def _percent(sess: Session) -> float:
    return 100.0 * len(sess.search.store.list("trials")) / sess.search.spec.optimizer.budget


def _key(study: str, what: str) -> str:
    return f"mmmo-{study}-{what}"[:100]


def _trial_table(sess: Session) -> None:
    from mmmo.report import study_view, trial_rows

    header, rows = trial_rows(study_view(sess.search.store))
    table = [dict(zip(header, r, strict=True)) for r in rows]
    create_table_artifact(table, key=_key(sess.search.store.name, "trials"),
                          description=f"trials of study {sess.search.store.name}")
