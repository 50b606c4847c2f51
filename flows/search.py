"""The MM-MO search as a Prefect flow.

    validate -> open or resume the study (lease) -> for each iteration, a subflow:
        propose -> per recipe: merge (in memory, on its slot's device)
                 -> evaluate_benchmark per objective task, in parallel -> record
        -> update_surrogate -> table artifact
    -> pick -> score table (objective + held-out tasks: base, sources, baselines, pick)
    -> export -> report (markdown artifact)

The study store is the source of truth; re-running the flow on a study resumes it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import wait
from prefect.utilities.annotations import allow_failure

from flows.config import configured, configured_reference, task_runner
from mmmo.runtime import Session, open_session, session
from mmmo.spec import SearchSpec, load_spec
from tasks import propose, record, update_surrogate
from tasks.final import export_recipe, make_report, pick_recipe

__all__ = ["merge_search", "resume_search", "search_iteration"]


@flow(name="merge-search")
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
    with store.leased():
        progress = create_progress_artifact(progress=_percent(sess), key=_key(store.name,
                                            "progress"), description="trials done / budget")
        ran = 0
        for batch in sess.search.batches:
            if not _unfinished(sess, batch.iteration):
                sess.search.catch_up(batch.iteration)  # a crash may have cut off its update
                continue
            if max_iterations is not None and ran >= max_iterations:
                get_run_logger().info("stopping after %d iteration(s) as asked", ran)
                return {"study": store.url, "complete": False}
            search_iteration.with_options(task_runner=task_runner(search_spec))(
                study_url=store.url, iteration=batch.iteration, progress_id=str(progress))
            ran += 1
        return finish(sess)


@flow(name="resume-search")
def resume_search(study: str, storage: str = "./studies") -> dict[str, Any]:
    """Resume (or finish) the study STUDY under STORAGE with its own stored spec."""
    from mmmo.study import StudyStore

    stored = StudyStore(storage, study).load_spec()
    spec_url = StudyStore(storage, study).url_of("spec.yaml")
    del stored  # loaded to fail early, with a clear error, when the study does not exist
    return merge_search(spec=spec_url, study=study, storage=storage)


@flow(name="search-iteration", flow_run_name="iteration-{iteration}")
def search_iteration(study_url: str, iteration: int, progress_id: str | None = None) -> None:
    """One iteration: propose, merge and evaluate each recipe, record, update the surrogate."""
    sess = session(study_url)
    merge_t, evaluate_t = configured(sess.search.spec)
    proposal = propose(study_url, iteration)
    done = {t.number for t in sess.search.store.trials()}
    last_on_slot: dict[int, list[Any]] = {}
    records = []
    for i, trial in enumerate(t for t in proposal["trials"] if t["number"] not in done):
        slot = i % len(sess.slots)
        merged = merge_t.submit(study_url, trial["recipe"], slot,
                                wait_for=last_on_slot.get(slot, []))
        scores = {name: evaluate_t.submit(study_url, trial["recipe"], name, slot,
                                          wait_for=[merged])
                  for name in sess.search.task_objectives}
        rec = record.submit(study_url, trial, iteration, allow_failure(merged),
                            {k: allow_failure(f) for k, f in scores.items()})
        last_on_slot[slot] = [rec]
        records.append(rec)
    wait(records)
    for rec in records:  # a record that could not be written ends the run with its own error
        rec.result()
    if progress_id:
        update_progress_artifact(progress_id, _percent(sess))
    update_surrogate(study_url, iteration)
    _trial_table(sess, iteration)


def finish(sess: Session) -> dict[str, Any]:
    """Pick the recipe, score it against base, sources and baselines, export it, report."""
    url = sess.search.store.url
    picked = pick_recipe(url)
    table = score_table(sess, picked)
    export = export_recipe(url, picked["recipe"])
    sess.search.write_final(picked, table, export)
    report = make_report(url)
    create_markdown_artifact(report["markdown"], key=_key(sess.search.store.name, "report"),
                             description=f"mm-mo report of study {sess.search.store.name}")
    return {"study": url, "complete": True, "pick": picked, "export": export,
            "report": report["files"]}


def score_table(sess: Session, picked: dict[str, Any]) -> dict[str, Any]:
    """The paper-style table: base, sources, baselines and the pick on every task.

    Models are spread over the slots; on one slot they run one after another (they share its
    resident model) while a model's tasks run in parallel. Failed cells are left empty.
    """
    search = sess.search
    url = search.store.url
    _, evaluate_t = configured(search.spec)
    reference_t = configured_reference(search.spec)
    names = search.final_columns()
    rows = search.final_rows(picked)
    last_on_slot: dict[int, list[Any]] = {}
    cells: dict[tuple[str, str], Any] = {}
    for i, (row, recipe) in enumerate(rows):
        slot = i % len(sess.slots)
        after = last_on_slot.get(slot, [])
        for name in names:
            if recipe is None:
                cells[row, name] = reference_t.submit(url, row, name, slot, wait_for=after)
            else:
                cells[row, name] = evaluate_t.submit(url, recipe, name, slot, wait_for=after)
        last_on_slot[slot] = [cells[row, n] for n in names]
    wait(list(cells.values()))
    scores = {key: fut.result(raise_on_failure=False) for key, fut in cells.items()}
    return search.score_table([r for r, _ in rows], names, {
        key: value["score"] for key, value in scores.items() if isinstance(value, dict)})


def _validated(spec: SearchSpec, *, study: str | None, storage: str | None) -> SearchSpec:
    return spec.with_overrides(study=study, storage=storage) if study or storage else spec


def _unfinished(sess: Session, iteration: int) -> bool:
    batch = sess.search.batches[iteration]
    numbers = set(range(batch.first, batch.first + batch.size))
    return not numbers <= {t.number for t in sess.search.store.trials()}


def _percent(sess: Session) -> float:
    return 100.0 * len(sess.search.store.trials()) / sess.search.spec.optimizer.budget


def _key(study: str, what: str) -> str:
    return f"mmmo-{study}-{what}"[:100]


def _trial_table(sess: Session, iteration: int) -> None:
    from mmmo.report import study_view, trial_rows

    header, rows = trial_rows(study_view(sess.search.store))
    table = [dict(zip(header, r, strict=True)) for r in rows]
    create_table_artifact(table, key=_key(sess.search.store.name, "trials"),
                          description=f"trials after iteration {iteration}")
