"""Per-process state of running searches: open studies and their device slots.

A *slot* is one device's resident merge target (a :class:`~mmmo.merging.Materializer`) and
what it currently holds. Trials of one slot run one after another; trials on different slots
run concurrently. Only recipes travel between tasks: merged weights stay in the slot (and so
on the worker) that made them. A task that finds its slot holding another recipe (after a
cache hit on the merge, a retry, or on a fresh worker) materialises the recipe again.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from mmmo._crash import crash_point
from mmmo.search import Search
from mmmo.spec import SearchSpec
from mmmo.study import StudyStore

__all__ = ["Session", "Slot", "activity", "open_session", "run_inline", "session",
           "set_activity", "slot_devices"]

_ACTIVITY = {"text": ""}


def set_activity(text: str) -> None:
    """Say what this process is doing now (shown by the CLI's progress bar)."""
    _ACTIVITY["text"] = text


def activity() -> str:
    """What this process is doing now, in a few words."""
    return _ACTIVITY["text"]


def slot_devices(spec: SearchSpec) -> list[str]:
    """The device of each slot: ``compute.max_concurrent_trials`` slots over the devices."""
    import torch

    n = spec.compute.max_concurrent_trials
    device = spec.compute.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        count = torch.cuda.device_count()
        return [f"cuda:{i % count}" for i in range(n)]
    return [device] * n


class Slot:
    """One resident merge target on one device."""

    def __init__(self, spec: SearchSpec, device: str) -> None:
        self.spec = spec
        self.device = device
        self.lock = threading.RLock()
        self._materializer: Any = None

    @property
    def materializer(self) -> Any:
        """The slot's Materializer, created on first use (loads base and sources once)."""
        with self.lock:
            if self._materializer is None:
                from mmmo.merging import Materializer

                self._materializer = Materializer.from_spec(self.spec, device=self.device)
            return self._materializer

    def ensure(self, recipe: Any) -> Any:
        """The slot's resident model holding ``recipe`` (materialised unless it already is)."""
        with self.lock:
            mat = self.materializer
            if mat.current_recipe_id == recipe.recipe_id and mat.last_result is not None:
                return mat.last_result
            return mat.materialize(recipe)

    def ensure_reference(self, label: str) -> Any:
        """The slot's resident model holding the base or a source model itself."""
        with self.lock:
            mat = self.materializer
            entry = next((m for m in (mat.base, *mat.sources) if m.label == label), None)
            last = mat.last_result
            if entry is not None and last is not None and \
                    last.recipe_id == f"model-{entry.fingerprint}":
                return last
            return mat.load_model(label)


@dataclass
class Session:
    """An open study in this process, with its slots."""

    search: Search
    slots: list[Slot] = field(default_factory=list)

    def slot(self, index: int) -> Slot:
        """Slot ``index`` (modulo the number of slots)."""
        return self.slots[index % len(self.slots)]


_SESSIONS: dict[str, Session] = {}
_LOCK = threading.Lock()


def open_session(spec: SearchSpec, *, preflight: bool = True) -> Session:
    """Open (or create) the spec's study in this process and register it."""
    search = Search.open(spec, preflight=preflight)
    sess = Session(search, [Slot(spec, d) for d in slot_devices(spec)])
    with _LOCK:
        _SESSIONS[search.store.url] = sess
    return sess


def session(study_url: str) -> Session:
    """The session of ``study_url``; re-opened from its store on a fresh worker process."""
    with _LOCK:
        found = _SESSIONS.get(study_url)
    if found is not None:
        return found
    storage, name = study_url.rstrip("/").rsplit("/", 1)
    spec = StudyStore(storage, name).load_spec().with_overrides(storage=storage, study=name)
    return open_session(spec, preflight=False)


def run_inline(search: Search, *, slot: Slot | None = None,
               cache: MutableMapping[str, Any] | None = None,
               max_iterations: int | None = None) -> bool:
    """Run (or resume) a search in this process, without Prefect: one slot, one trial at a time.

    The same store, proposals, records and replay as the flow, so a study can be started here
    and finished by the flow or the other way round. ``cache`` (e.g. a dict shared by several
    searches) holds merge infos by ``merge-<recipe id>`` and benchmark outcomes by their
    :func:`~mmmo.evaluation.benchmark_key`; a recipe whose results are all cached is not
    materialised.

    Returns:
        True when the search's budget is exhausted.
    """
    slot = slot or Slot(search.spec, slot_devices(search.spec)[0])
    cache = {} if cache is None else cache
    ran = 0
    for batch in search.batches:
        done = {t.number for t in search.store.trials()}
        todo = [t for t in search.propose(batch.iteration).trials if t.number not in done] \
            if not set(range(batch.first, batch.first + batch.size)) <= done else []
        if not todo:
            if search.catch_up(batch.iteration):  # killed between its records and its update
                crash_point(f"iteration:{batch.iteration}:told")
            continue
        if max_iterations is not None and ran >= max_iterations:
            return False
        for trial in todo:
            search.store.write_trial(_inline_trial(search, slot, trial, batch.iteration, cache))
        search.update_surrogate(batch.iteration)
        crash_point(f"iteration:{batch.iteration}:told")
        ran += 1
    return True


def _inline_trial(search: Search, slot: Slot, trial: Any, iteration: int,
                  cache: MutableMapping[str, Any]) -> Any:
    """Merge (unless cached), evaluate each objective (with retries), and build the record."""
    from mmmo.evaluation import EvalFailure, Outcome, benchmark_key
    from mmmo.evaluation import evaluate_benchmark as evaluate

    spec = search.spec
    recipe = search.space.recipe(trial.recipe)
    keys = {t.label: benchmark_key(recipe.recipe_id, t,
                                   model_fingerprints=search.space.fingerprints)
            for t in spec.objectives.tasks}
    merge_key = f"merge-{recipe.recipe_id}"
    outcomes: dict[str, Any] = {}
    info, error = cache.get(merge_key), None
    for task in spec.objectives.tasks:
        if keys[task.label] in cache:
            outcomes[task.label] = TypeAdapter(Outcome).validate_python(cache[keys[task.label]])
            continue
        try:
            merged = slot.ensure(recipe)
        except Exception as exc:  # noqa: BLE001 - a failed merge is a failed trial
            error = {"kind": "merge", "message": f"{type(exc).__name__}: {exc}"[:500]}
            outcomes[task.label] = EvalFailure(kind="exception", task=task.label,
                                               message="not evaluated: the merge failed")
            continue
        info = merged.info()
        crash_point(f"trial:{trial.number}:merged")
        for attempt in range(spec.evaluation.retries + 1):
            out = evaluate(merged.model, merged.tokenizer, task,
                           batch_size=task.batch_size or spec.compute.batch_size,
                           timeout_s=spec.evaluation.timeout_seconds,
                           fault_key=recipe.recipe_id, attempt=attempt)
            if not isinstance(out, EvalFailure) or out.kind == "nan":
                break
        outcomes[task.label] = out
        crash_point(f"trial:{trial.number}:evaluated:{task.label}")
        if not isinstance(out, EvalFailure) or out.kind == "nan":
            cache[keys[task.label]] = out.model_dump(mode="json")
    if info is None and error is None:  # every benchmark was cached but not the merge
        info = slot.ensure(recipe).info()
    if info is not None:
        cache[merge_key] = info
    evaluation = search.assemble(outcomes, sparsity=None if info is None else info["sparsity"])
    timings = {"merge_s": (info or {}).get("seconds", 0.0),
               **{f"eval_{o.task}_s": o.seconds for o in evaluation.outcomes}}
    return search.trial_record(trial, iteration, evaluation=evaluation, merge=info,
                               error=error, timings=timings)
