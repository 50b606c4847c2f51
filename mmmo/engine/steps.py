"""The search's step functions: what every executor (inline, threads, Prefect, Dask) runs.

Each step takes plain JSON-able arguments (the study URL, a recipe or trial as a dict, a slot
index, a document range), finds the open study and its slot through
:func:`mmmo.engine.slots.session`, looks its result up in the result store under its one cache
key (:mod:`mmmo.engine.keys`), computes it only when absent, and writes it there as soon as it
is known (:mod:`mmmo.engine.outcomes`):

- :func:`merge_step` -- a recipe's merge info (sparsity, timings); materialises the recipe on
  the slot only if the info is not known; raises when the merge fails;
- :func:`benchmark_step` -- one task on a slice of its documents, for a recipe, with the
  spec's retries (a dead engine is restarted between them); never raises for a failed
  evaluation (the outcome is a typed failure);
- :func:`reference_step` -- the same for the base or a source model itself;
- :func:`trial_step` -- a trial's merge and its benchmarks (concurrently when the backend
  batches them), as one unit that a Dask worker runs where the merged weights live;
- :func:`record_step` -- the trial record from those results, written to the study (on the
  driver only: one writer assigns the order trials finished in).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import TypeAdapter

from mmmo import hooks
from mmmo.engine.keys import benchmark_key, merge_key, reference_key
from mmmo.engine.slots import Session, session
from mmmo.evaluation.tasks import DocRange
from mmmo.hooks import crash_point

__all__ = ["DRIVER_STEPS", "benchmark_step", "cell_step", "collect", "export_step",
           "merge_step", "record_step", "reference_step", "trial_step"]

LOG = logging.getLogger("mmmo.engine")

_WORKER = f"{socket.gethostname()}:{os.getpid()}"
_RECORD_LOCKS: dict[str, threading.Lock] = {}
_RECORD_LOCKS_LOCK = threading.Lock()


def _docs(docs: DocRange | Mapping[str, Any] | None, task: Any) -> DocRange:
    if docs is None:
        return DocRange(stop=task.limit)
    return docs if isinstance(docs, DocRange) else DocRange.model_validate(dict(docs))


def merge_step(study_url: str, recipe: Mapping[str, Any], slot: int) -> dict[str, Any]:
    """A recipe's merge info: stored, or computed by serving the recipe on ``slot``.

    Raises:
        MergeError (or any error of the merge): the recipe cannot be merged.
    """
    sess = session(study_url)
    outcomes = sess.search.outcomes
    key = merge_key(recipe["recipe_id"])
    found = outcomes.get(key)
    if found is not None:
        return found
    _activity(f"merging recipe {recipe['recipe_id'][:8]}")
    info = sess.slot(slot).serve(sess.search.space.recipe(recipe))
    outcomes.put(key, info)
    crash_point(f"merge:done:{recipe['recipe_id'][:8]}")
    return info


def benchmark_step(study_url: str, recipe: Mapping[str, Any], task_name: str,
                   docs: DocRange | Mapping[str, Any] | None, slot: int) -> dict[str, Any]:
    """A recipe's outcome on ``docs`` of task ``task_name`` (stored, or evaluated on ``slot``).

    Raises:
        MergeError: the recipe had to be materialised and its merge failed.
    """
    sess = session(study_url)
    search = sess.search
    task = search.spec.task(task_name)
    rng = _docs(docs, task)
    key = benchmark_key(search, recipe["recipe_id"], task_name, rng)
    found = search.outcomes.get(key)
    if found is not None:
        return found
    target = sess.slot(slot)
    parsed = search.space.recipe(recipe)

    def serve() -> None:
        info = target.serve(parsed)
        mkey = merge_key(parsed.recipe_id)
        if search.outcomes.get(mkey) is None:
            search.outcomes.put(mkey, info)

    _activity(f"evaluating {task_name} of recipe {recipe['recipe_id'][:8]}")
    out = _evaluate(sess, target, serve, task, rng, fault_id=parsed.recipe_id)
    return _store(search, key, out, f"benchmark:done:{task_name}")


def reference_step(study_url: str, label: str, task_name: str,
                   docs: DocRange | Mapping[str, Any] | None, slot: int) -> dict[str, Any]:
    """The base's or a source's outcome on ``docs`` of a task (stored, or evaluated)."""
    sess = session(study_url)
    search = sess.search
    task = search.spec.task(task_name)
    rng = _docs(docs, task)
    key = reference_key(search, label, task_name, rng)
    found = search.outcomes.get(key)
    if found is not None:
        return found
    target = sess.slot(slot)
    model_id = f"model-{search.space.fingerprint_of(label)}"
    _activity(f"evaluating {task_name} of {label}")
    out = _evaluate(sess, target, lambda: target.serve_model(label, model_id), task, rng,
                    fault_id=model_id)
    return _store(search, key, out, f"reference:done:{task_name}")


def _store(search: Any, key: str, out: dict[str, Any], point: str) -> dict[str, Any]:
    """Keep a finished outcome (not a failure that a retry in a later run may undo)."""
    if out.get("status") != "failed" or out.get("kind") == "nan":
        search.outcomes.put(key, out)
    crash_point(point)
    return out


def _evaluate(sess: Session, slot: Any, serve: Any, task: Any, docs: DocRange, *,
              fault_id: str) -> dict[str, Any]:
    """Serve, score, and retry under ``evaluation.retries`` (restarting a dead backend)."""
    from mmmo.evaluation import EvalFailure, evaluate_benchmark
    from mmmo.evaluation.vllm.engine import EngineError

    spec = sess.search.spec
    policy = spec.evaluation
    out: Any = None
    for attempt in range(policy.retries + 1):
        try:
            serve()
        except EngineError as exc:  # the engine died or hung while taking the weights
            out = EvalFailure(kind="exception", task=task.label, message=_message(exc))
            _recover(slot, out, attempt, policy, task, fault_id)
            continue
        backend = slot.backend
        model, tokenizer = _target(backend, task.batch_size or spec.compute.batch_size)
        with hooks.evaluating(fault_id, attempt):
            out = evaluate_benchmark(model, tokenizer, task, docs=docs,
                                     batch_size=task.batch_size or spec.compute.batch_size,
                                     timeout_s=policy.timeout_seconds)
        if not isinstance(out, EvalFailure) or out.kind == "nan":
            break
        _recover(slot, out, attempt, policy, task, fault_id)
    return out.model_dump(mode="json")


def _recover(slot: Any, out: Any, attempt: int, policy: Any, task: Any, fault_id: str) -> None:
    """After a failed attempt: restart a backend that stopped answering, wait the delay."""
    slot.recover()
    if attempt < policy.retries:
        delay = _delay(policy.retry_delay_seconds, attempt)
        LOG.info("benchmark %s of %s failed (%s: %s); retry %d of %d in %.1f s", task.label,
                 fault_id[:8], out.kind, out.message, attempt + 1, policy.retries, delay)
        time.sleep(delay)


def _target(backend: Any, batch_size: int | str) -> tuple[Any, Any]:
    """What :func:`evaluate_benchmark` evaluates: ``(model, tokenizer)`` of an in-process
    backend (so that an out-of-memory error retries at half the batch), else its ``LM``."""
    target = getattr(backend, "target", None)
    return target() if target is not None else (backend.lm(batch_size=batch_size), None)


def _delay(delays: float | list[float], attempt: int) -> float:
    if isinstance(delays, int | float):
        return float(delays)
    return float(delays[min(attempt, len(delays) - 1)]) if delays else 0.0


# ------------------------------------------------------------------------------ one trial


def trial_step(study_url: str, item: Mapping[str, Any], slot: int) -> dict[str, Any]:
    """Merge a proposed trial's recipe and run its benchmarks on ``slot``; never raises.

    Returns:
        ``{"merge": info | None, "merge_error": str | None, "benchmarks": {task: [outcome
        per document range]}, "worker": host:pid}`` (what :func:`record_step` records).
    """
    sess = session(study_url)
    search = sess.search
    started = time.time()
    worker = f"{socket.gethostname()}:{os.getpid()}"  # where the trial ran (its pid now)
    try:
        info = merge_step(study_url, item["recipe"], slot)
    except Exception as exc:  # noqa: BLE001 - a failed merge is a failed trial
        return {"merge": None, "merge_error": _message(exc), "benchmarks": {},
                "worker": worker, "slot": slot, "started_at": started,
                "ended_at": time.time()}
    plan = search.trial_benchmarks(int(item.get("level", 0)))
    jobs = [(name, rng) for name, ranges in plan.items() for rng in ranges]

    def run(job: tuple[str, DocRange]) -> dict[str, Any]:
        try:
            return benchmark_step(study_url, item["recipe"], job[0], job[1], slot)
        except Exception as exc:  # noqa: BLE001 - e.g. the merge failed when re-served
            return {"status": "failed", "kind": "exception", "task": job[0],
                    "message": _message(exc)}

    if sess.slot(slot).backend.concurrent and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="bench") as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    benchmarks: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    for (name, _), out in zip(jobs, results, strict=True):
        benchmarks[name].append(out)
    return {"merge": info, "merge_error": None, "benchmarks": benchmarks, "worker": worker,
            "slot": slot, "started_at": started, "ended_at": time.time()}


def collect(merged: Any, benchmarks: Mapping[str, Any], *, worker: str = "") -> dict[str, Any]:
    """A :func:`trial_step`-shaped result from separately run steps (values or exceptions).

    ``merged`` is the merge info or the exception the merge raised; each benchmark is a list
    of outcomes (or exceptions, or None when the step never ran).
    """
    ok = isinstance(merged, dict)
    out: dict[str, list[Any]] = {}
    for name, values in benchmarks.items():
        cells = []
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, dict):
                cells.append(value)
            else:
                why = ("not evaluated: the merge failed" if not ok else
                       _message(value) if value is not None else
                       "not evaluated: an upstream step failed")
                cells.append({"status": "failed", "kind": "exception", "task": name,
                              "message": why})
        out[name] = cells
    return {"merge": merged if ok else None, "merge_error": None if ok else _message(merged),
            "benchmarks": out, "worker": worker}


def record_step(study_url: str, item: Mapping[str, Any], iteration: int,
                result: Mapping[str, Any]) -> dict[str, Any]:
    """Write the trial record of ``item`` from its :func:`trial_step` result; return it."""
    from mmmo.evaluation import EvalFailure, Outcome
    from mmmo.study import ProposedTrial

    search = session(study_url).search
    proposed = ProposedTrial.model_validate(dict(item))
    merged = result.get("merge")
    adapter = TypeAdapter(Outcome)
    outcomes, documents = {}, {}
    for task in search.spec.objectives.tasks:
        cells = (result.get("benchmarks") or {}).get(task.label) or []
        if merged is None:
            outcomes[task.label] = EvalFailure(kind="exception", task=task.label,
                                               message="not evaluated: the merge failed")
            continue
        parsed = [adapter.validate_python(c) for c in cells] or [EvalFailure(
            kind="exception", task=task.label, message="not evaluated")]
        outcomes[task.label] = search.combine(task.label, parsed)
        documents[task.label] = sum(getattr(c, "n_docs", 0) for c in parsed)
    evaluation = search.assemble(outcomes, sparsity=None if merged is None
                                 else merged["sparsity"])
    error = None if merged is not None else {"kind": "merge",
                                             "message": result.get("merge_error") or ""}
    timings = {"merge_s": (merged or {}).get("seconds", 0.0),
               **{f"eval_{o.task}_s": o.seconds for o in evaluation.outcomes},
               **{k: float(result[k]) for k in ("started_at", "ended_at") if k in result}}
    with _record_lock(study_url):
        record = search.trial_record(proposed, iteration, evaluation=evaluation, merge=merged,
                                     error=error, timings=timings,
                                     worker=str(result.get("worker") or _WORKER),
                                     documents=documents, slot=result.get("slot"))
        search.store.write_trial(record)
    return record.model_dump(mode="json")


def _record_lock(study_url: str) -> threading.Lock:
    with _RECORD_LOCKS_LOCK:
        return _RECORD_LOCKS.setdefault(study_url, threading.Lock())


def _message(exc: Any) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _activity(text: str) -> None:
    from mmmo.engine.activity import set_activity

    set_activity(text)


# ------------------------------------------------------------------------- the last stage


def cell_step(study_url: str, cell: Mapping[str, Any], slot: int) -> dict[str, Any]:
    """One cell of the final table: a recipe's (``cell["recipe"]``) or a single model's
    (``cell["model"]``, a label) outcome on ``cell["docs"]`` of task ``cell["task"]``."""
    if cell.get("recipe") is not None:
        return benchmark_step(study_url, cell["recipe"], cell["task"], cell.get("docs"), slot)
    return reference_step(study_url, cell["model"], cell["task"], cell.get("docs"), slot)


def export_step(study_url: str, recipe: Mapping[str, Any], slot: int) -> str:
    """Export a recipe (HF folder + mergekit YAML) into the study unless already complete."""
    from mmmo.merging.export import export, read_export

    sess = session(study_url)
    search = sess.search
    rec = search.space.recipe(recipe)
    url = search.store.url_of(f"exports/{rec.recipe_id}")
    done = read_export(url)
    if done is not None and done.recipe_id == rec.recipe_id:
        return done.url
    target = sess.slot(slot)
    with target.lock:  # an export materialises into the slot's resident model
        materializer = getattr(target.backend, "materializer", None)
        if materializer is not None and getattr(materializer, "model", None) is None:
            materializer = None  # a streaming materializer: mergekit's own route instead
        try:
            return export(rec, url, materializer=materializer, overwrite=True,
                          trust_remote_code=search.spec.compute.trust_remote_code).url
        finally:
            target.forget()


def propose_step(study_url: str, iteration: int) -> dict[str, Any]:
    """Batch iteration ``iteration``'s proposal: the stored one, or a new one (written first)."""
    return session(study_url).search.propose(iteration).model_dump(mode="json")


def propose_next_step(study_url: str, running: list[int]) -> dict[str, Any]:
    """An asynchronous search's next recipe, the trials ``running`` being pending points."""
    return session(study_url).search.propose_next(running).model_dump(mode="json")


def promotions_step(study_url: str, iteration: int | None,
                    running: list[int]) -> dict[str, Any] | None:
    """Multi-fidelity: the recipes promoted a level up now (a stored proposal), or None."""
    proposal = session(study_url).search.propose_promotions(iteration, running)
    return None if proposal is None else proposal.model_dump(mode="json")


def update_step(study_url: str, iteration: int | None) -> dict[str, Any]:
    """Tell the optimizer what is recorded; store its state; return the progress."""
    return session(study_url).search.update_surrogate(iteration)


def catch_up_step(study_url: str, iteration: int) -> bool:
    """Redo a finished iteration's update if a crash cut it off."""
    return session(study_url).search.catch_up(iteration)


def pick_step(study_url: str) -> dict[str, Any]:
    """The final pick under the spec's policy."""
    return session(study_url).search.pick_summary()


def report_step(study_url: str) -> dict[str, Any]:
    """Write the study report; its markdown and files."""
    from mmmo.report import build_report

    report = build_report(session(study_url).search.store)
    return {"markdown": report.markdown, "files": report.files}


DRIVER_STEPS = {
    "propose": propose_step,
    "propose-next": propose_next_step,
    "propose-promotions": promotions_step,
    "update-surrogate": update_step,
    "catch-up": catch_up_step,
    "pick": pick_step,
    "report": report_step,
}
"""The steps the driver runs itself (Prefect runs each as a task of the same name)."""
