"""Prefect tasks: one line each over the engine's step functions (:mod:`mmmo.engine.steps`).

Tasks take plain, JSON-able arguments (the study URL, a recipe or trial as a dict, a slot
index, a document range) and find the open study and its slots through
:func:`mmmo.engine.slots.session`. They keep no results and retry nothing of their own: each
step looks its result up in the engine's result store (``<storage>/.outcomes``) under its one
cache key and applies the spec's evaluation retries itself, so the flow, the inline executor
and Dask workers share one cache and one retry policy.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from mmmo.engine import steps

__all__ = ["DRIVER_TASKS", "cell", "evaluate_benchmark", "export", "merge", "record",
           "remote_trial"]

_OPTS: dict[str, Any] = {"persist_result": False, "cache_policy": None}


@task(name="propose", **_OPTS)
def propose(study_url: str, iteration: int) -> dict[str, Any]:
    """Propose an iteration's recipes (or return the stored proposal)."""
    return steps.propose_step(study_url, iteration)


@task(name="propose-next", **_OPTS)
def propose_next(study_url: str, running: list[int]) -> dict[str, Any]:
    """Propose the next recipe of an asynchronous search (trials in flight pending)."""
    return steps.propose_next_step(study_url, running)


@task(name="propose-promotions", **_OPTS)
def propose_promotions(study_url: str, iteration: int | None,
                       running: list[int]) -> dict[str, Any] | None:
    """Multi-fidelity: propose the recipes the promotion rule moves up a level now."""
    return steps.promotions_step(study_url, iteration, running)


@task(name="update-surrogate", **_OPTS)
def update_surrogate(study_url: str, iteration: int | None) -> dict[str, Any]:
    """Tell the optimizer what is recorded and store its state."""
    return steps.update_step(study_url, iteration)


@task(name="catch-up", **_OPTS)
def catch_up(study_url: str, iteration: int) -> bool:
    """Redo a finished iteration's update that a crash cut off."""
    return steps.catch_up_step(study_url, iteration)


@task(name="merge", **_OPTS)
def merge(study_url: str, recipe: dict[str, Any], slot: int) -> dict[str, Any]:
    """A recipe's merge info (materialised in the slot's resident model unless known)."""
    return steps.merge_step(study_url, recipe, slot)


@task(name="evaluate-benchmark", **_OPTS)
def evaluate_benchmark(study_url: str, recipe: dict[str, Any], objective: str,
                       docs: dict[str, Any], slot: int) -> dict[str, Any]:
    """One task on a slice of its documents, on the slot's model holding the recipe."""
    return steps.benchmark_step(study_url, recipe, objective, docs, slot)


@task(name="record", **_OPTS)
def record(study_url: str, trial: dict[str, Any], iteration: int, merged: Any,
           benchmarks: dict[str, list[Any]]) -> dict[str, Any]:
    """Write a trial's record (complete, or failed with its typed error) to the study."""
    return steps.record_step(study_url, trial, iteration, steps.collect(merged, benchmarks))


@task(name="trial", **_OPTS)
def remote_trial(study_url: str, trial: dict[str, Any], iteration: int) -> dict[str, Any]:
    """A whole trial run on a Dask worker of the run's cluster, then recorded here."""
    from mmmo.engine.dask import trial_on_cluster

    return trial_on_cluster(study_url, trial, iteration)


@task(name="evaluate-cell", **_OPTS)
def cell(study_url: str, cell: dict[str, Any], slot: int) -> dict[str, Any]:
    """One cell of the final table (a recipe or a single model on a task's documents)."""
    return steps.cell_step(study_url, cell, slot)


@task(name="export", **_OPTS)
def export(study_url: str, recipe: dict[str, Any], slot: int) -> str:
    """Export a recipe (HF folder + mergekit YAML) into the study; kept if already there."""
    return steps.export_step(study_url, recipe, slot)


@task(name="pick", **_OPTS)
def pick(study_url: str) -> dict[str, Any]:
    """Choose the final recipe under the spec's pick policy."""
    return steps.pick_step(study_url)


@task(name="report", **_OPTS)
def report(study_url: str) -> dict[str, Any]:
    """Write the study report (PNGs, markdown, HTML) into the study."""
    return steps.report_step(study_url)


DRIVER_TASKS = {"propose": propose, "propose-next": propose_next,
                "propose-promotions": propose_promotions,
                "update-surrogate": update_surrogate, "catch-up": catch_up, "pick": pick,
                "report": report}
"""The driver's steps as tasks, by the names the engine calls them."""
