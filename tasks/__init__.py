"""Prefect tasks: thin wrappers over the Prefect-free core in :mod:`mmmo`.

Tasks take plain, JSON-able arguments (the study URL, a recipe as a dict, a slot index) and
find the open study and its resident models through :func:`mmmo.runtime.session`.

Caching: ``merge`` and ``evaluate_benchmark`` are cached across runs under keys built from
the recipe id and what the task depends on (see :mod:`tasks.caching`), with results persisted
as JSON to the study storage's result store. ``propose``, ``record`` and ``update_surrogate``
read and write the study store itself, which is their cache: a stored proposal is returned
as stored, a recorded trial is never evaluated again.
"""

from __future__ import annotations

import socket
from typing import Any

from prefect import task

from mmmo.errors import EvaluationError
from mmmo.runtime import session, set_activity
from tasks.caching import benchmark_cache_key, merge_cache_key, reference_cache_key


@task(name="propose")
def propose(study_url: str, iteration: int) -> dict[str, Any]:
    """Propose an iteration's recipes (or return the stored proposal)."""
    return session(study_url).search.propose(iteration).model_dump(mode="json")


@task(name="merge", cache_key_fn=merge_cache_key, persist_result=True,
      result_serializer="json")
def merge(study_url: str, recipe: dict[str, Any], slot: int) -> dict[str, Any]:
    """Materialise a recipe in the slot's resident model; return its sparsity and timing."""
    sess = session(study_url)
    set_activity(f"merging recipe {recipe['recipe_id'][:8]}")
    result = sess.slot(slot).ensure(sess.search.space.recipe(recipe))
    return result.info()


@task(name="evaluate-benchmark", cache_key_fn=benchmark_cache_key, persist_result=True,
      result_serializer="json")
def evaluate_benchmark(study_url: str, recipe: dict[str, Any], objective: str,
                       slot: int) -> dict[str, Any]:
    """Score one task on the slot's model holding the recipe (raises to be retried)."""
    sess = session(study_url)
    target = sess.slot(slot).ensure(sess.search.space.recipe(recipe))
    set_activity(f"evaluating {objective} of recipe {recipe['recipe_id'][:8]}")
    return _score(sess, target, objective)


@task(name="evaluate-reference", cache_key_fn=reference_cache_key, persist_result=True,
      result_serializer="json")
def evaluate_reference(study_url: str, model: str, task_name: str, slot: int) -> dict[str, Any]:
    """Score the base or a source model (by label) on one task, for the final table."""
    sess = session(study_url)
    target = sess.slot(slot).ensure_reference(model)
    set_activity(f"evaluating {task_name} of {model}")
    return _score(sess, target, task_name)


def _score(sess: Any, target: Any, task_name: str) -> dict[str, Any]:
    """Evaluate; a NaN score is the recipe's (deterministic) outcome and is returned as a
    typed failure, other failures raise EvaluationError so that Prefect retries them."""
    from prefect.runtime import task_run

    from mmmo.evaluation import EvalFailure
    from mmmo.evaluation import evaluate_benchmark as run

    spec = sess.search.spec
    task = spec.task(task_name)
    out = run(target.model, target.tokenizer, task,
              batch_size=task.batch_size or spec.compute.batch_size,
              timeout_s=spec.evaluation.timeout_seconds, fault_key=target.recipe_id,
              attempt=max(task_run.run_count - 1, 0))
    if isinstance(out, EvalFailure):
        if out.kind == "nan":
            return out.model_dump(mode="json")
        raise EvaluationError(out.model_dump(mode="json"))
    return out.model_dump(mode="json")


@task(name="record")
def record(study_url: str, trial: dict[str, Any], iteration: int, merged: Any,
           benchmarks: dict[str, Any]) -> dict[str, Any]:
    """Write a trial's record (complete, or failed with its typed error) to the study."""
    from mmmo.study import ProposedTrial

    search = session(study_url).search
    ok = isinstance(merged, dict)
    outcomes = {name: _outcome(name, value, merged_ok=ok) for name, value in benchmarks.items()}
    evaluation = search.assemble(outcomes, sparsity=merged.get("sparsity") if ok else None)
    timings = {"merge_s": merged.get("seconds", 0.0)} if ok else {}
    timings.update({f"eval_{o.task}_s": o.seconds for o in evaluation.outcomes})
    error = None if ok else {"kind": "merge", "message": _message(merged)}
    rec = search.trial_record(ProposedTrial.model_validate(trial), iteration,
                              evaluation=evaluation, merge=merged if ok else None,
                              error=error, timings=timings, worker=socket.gethostname())
    search.store.write_trial(rec)
    return {"number": rec.number, "status": rec.status, "objectives": rec.objectives}


@task(name="update-surrogate")
def update_surrogate(study_url: str, iteration: int) -> dict[str, Any]:
    """Tell the optimizer the iteration's results and store its state."""
    return session(study_url).search.update_surrogate(iteration)


def _outcome(task: str, value: Any, *, merged_ok: bool) -> Any:
    """A benchmark's outcome from its task's result, exception, or None (never ran)."""
    from pydantic import TypeAdapter

    from mmmo.evaluation import EvalFailure, Outcome

    if isinstance(value, dict):
        return TypeAdapter(Outcome).validate_python(value)
    if isinstance(value, EvaluationError) and value.args and isinstance(value.args[0], dict):
        return EvalFailure.model_validate(value.args[0])
    if value is None:
        why = "the merge failed" if not merged_ok else "an upstream task failed"
        return EvalFailure(kind="exception", task=task, message=f"not evaluated: {why}")
    return EvalFailure(kind="exception", task=task, message=_message(value))


def _message(exc: Any) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]
