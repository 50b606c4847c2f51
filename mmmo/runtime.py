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

__all__ = ["Session", "Slot", "activity", "export_recipe", "finish_inline", "open_session",
           "run_inline", "session", "set_activity", "slot_devices"]

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
               max_iterations: int | None = None, finish: bool = False) -> bool:
    """Run (or resume) a search in this process, without Prefect: one slot, one trial at a time.

    The same store, proposals, records and replay as the flow, so a study can be started here
    and finished by the flow or the other way round. It holds the study's lease meanwhile.
    Every merge info and benchmark outcome is written to the study (``outcomes/``) as soon as
    it is known, under the flow's cache keys, and re-used from there: a run killed between a
    benchmark and its trial's record does not evaluate that benchmark again. ``cache`` (e.g. a
    dict shared by several searches) is looked up first; a recipe whose results are all known
    is not materialised.

    Args:
        finish: Once the budget is spent, also pick, score the final table, export the pick
            and write the report, as the flow does (:func:`finish_inline`).

    Returns:
        True when the search's budget is exhausted (and, with ``finish``, the study finished).
    """
    slot = slot or Slot(search.spec, slot_devices(search.spec)[0])
    memo = _Memo(search.store, {} if cache is None else cache)
    ran = 0
    with search.store.leased():
        for batch in search.batches:
            done = {t.number for t in search.store.trials()}
            todo = [t for t in search.propose(batch.iteration).trials if t.number not in done] \
                if not set(range(batch.first, batch.first + batch.size)) <= done else []
            if not todo:
                if search.catch_up(batch.iteration):  # killed between its records and update
                    crash_point(f"iteration:{batch.iteration}:told")
                continue
            if max_iterations is not None and ran >= max_iterations:
                return False
            for trial in todo:
                search.store.write_trial(_inline_trial(search, slot, trial, batch.iteration,
                                                       memo))
            search.update_surrogate(batch.iteration)
            crash_point(f"iteration:{batch.iteration}:told")
            ran += 1
        if finish:
            finish_inline(search, slot, memo)
    return True


def finish_inline(search: Search, slot: Slot,
                  cache: MutableMapping[str, Any] | None = None) -> dict[str, Any]:
    """Pick, score the final table, export the pick and write the report, without Prefect.

    What the flow's last stage does, one cell after another on ``slot``; scores already in
    ``cache`` or in the study's ``outcomes/`` are re-used, a complete export is kept.
    """
    from mmmo.report import build_report

    memo = cache if isinstance(cache, _Memo) else _Memo(search.store, cache or {})
    picked = search.pick_summary()
    rows, columns = search.final_rows(picked), search.final_columns()
    scores: dict[tuple[str, str], float] = {}
    for row, recipe in rows:
        for name in columns:
            task = search.spec.task(name)
            if recipe is None:
                key = "ref-" + search.reference_key(row, name)
                out = memo.get(key)
                if out is None:
                    target = slot.ensure_reference(row)
                    out = memo.put(key, _evaluate(search, target, task))
            else:
                key = "bench-" + search.benchmark_key(recipe["recipe_id"], name)
                out = memo.get(key)
                if out is None:
                    target = slot.ensure(search.space.recipe(recipe))
                    out = memo.put(key, _evaluate(search, target, task))
            if out.get("status") == "ok":
                scores[row, name] = out["score"]
    table = search.score_table([r for r, _ in rows], columns, scores)
    url = export_recipe(search, slot, picked["recipe"])
    final = search.write_final(picked, table, url)
    build_report(search.store)
    return final


def export_recipe(search: Search, slot: Slot, recipe: dict[str, Any]) -> str:
    """Export a recipe (HF folder + mergekit YAML) into the study, unless already complete."""
    from mmmo.merging.export import export, read_export

    rec = search.space.recipe(recipe)
    url = search.store.url_of(f"exports/{rec.recipe_id}")
    done = read_export(url)
    if done is not None and done.recipe_id == rec.recipe_id:
        return done.url
    with slot.lock:  # export materialises into the slot's resident model
        return export(rec, url, materializer=slot.materializer, overwrite=True).url


class _Memo:
    """Outcomes by cache key: a dict first, then the study's ``outcomes/`` (written through)."""

    def __init__(self, store: StudyStore, cache: MutableMapping[str, Any]) -> None:
        self.store, self.cache = store, cache

    def get(self, key: str) -> Any | None:
        if key not in self.cache:
            found = self.store.read_outcome(key)
            if found is None:
                return None
            self.cache[key] = found
        return self.cache[key]

    def put(self, key: str, value: Any) -> Any:
        """Remember a finished outcome (not a failure that a retry may undo); return it."""
        if value.get("status") != "failed" or value.get("kind") == "nan":
            self.store.write_outcome(key, value)
            self.cache[key] = value
        return value


def _evaluate(search: Search, target: Any, task: Any) -> dict[str, Any]:
    """Score ``task`` on a resident model, with the spec's retries; the outcome as JSON."""
    from mmmo.evaluation import EvalFailure
    from mmmo.evaluation import evaluate_benchmark as evaluate

    spec = search.spec
    out: Any = None
    for attempt in range(spec.evaluation.retries + 1):
        out = evaluate(target.model, target.tokenizer, task,
                       batch_size=task.batch_size or spec.compute.batch_size,
                       timeout_s=spec.evaluation.timeout_seconds,
                       fault_key=target.recipe_id, attempt=attempt)
        if not isinstance(out, EvalFailure) or out.kind == "nan":
            break
    return out.model_dump(mode="json")


def _inline_trial(search: Search, slot: Slot, trial: Any, iteration: int, memo: _Memo) -> Any:
    """Merge (unless every outcome is known), evaluate each objective, build the record."""
    from mmmo.evaluation import EvalFailure, Outcome

    spec = search.spec
    recipe = search.space.recipe(trial.recipe)
    merge_key = f"merge-{recipe.recipe_id}"
    outcomes: dict[str, Any] = {}
    info, error = memo.get(merge_key), None
    for task in spec.objectives.tasks:
        key = "bench-" + search.benchmark_key(recipe.recipe_id, task.label)
        known = memo.get(key)
        if known is None:
            try:
                merged = slot.ensure(recipe)
            except Exception as exc:  # noqa: BLE001 - a failed merge is a failed trial
                error = {"kind": "merge", "message": f"{type(exc).__name__}: {exc}"[:500]}
                outcomes[task.label] = EvalFailure(kind="exception", task=task.label,
                                                   message="not evaluated: the merge failed")
                continue
            if info is None:
                info = memo.put(merge_key, merged.info())
            crash_point(f"trial:{trial.number}:merged")
            known = memo.put(key, _evaluate(search, merged, task))
            crash_point(f"trial:{trial.number}:evaluated:{task.label}")
        outcomes[task.label] = TypeAdapter(Outcome).validate_python(known)
    if info is None and error is None:  # every benchmark was known but not the merge
        info = memo.put(merge_key, slot.ensure(recipe).info())
    evaluation = search.assemble(outcomes, sparsity=None if info is None else info["sparsity"])
    timings = {"merge_s": (info or {}).get("seconds", 0.0),
               **{f"eval_{o.task}_s": o.seconds for o in evaluation.outcomes}}
    return search.trial_record(trial, iteration, evaluation=evaluation, merge=info,
                               error=error, timings=timings)
