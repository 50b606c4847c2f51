"""The search, Prefect-free: open a study, propose batches, record trials, pick the winner.

The study store is the source of truth. The optimizer is rebuilt for every proposal by
replaying the recorded trials (batch by batch, or in the order they finished for an
asynchronous search; strategies are deterministic given their seed and told data), so a search
killed at any point resumes from its store alone:

- a proposal is written before any of it is evaluated; on resume its unfinished trials are
  evaluated as proposed, never re-proposed;
- a finished trial is never evaluated again.

The engine (:mod:`mmmo.engine`) runs the search with these functions on any executor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmmo.errors import MmmoError
from mmmo.final_table import FinalStage, natural_constraints, objective_signs, recipe_json
from mmmo.hooks import crash_point
from mmmo.optimization import Optimizer, make_optimizer
from mmmo.preflight import check_device, check_inputs, check_models
from mmmo.spec import SearchSpec
from mmmo.study import Proposal, ProposedTrial, StudyStore, TrialRecord

__all__ = ["Batch", "Search", "check_device", "check_inputs", "check_models",
           "natural_constraints", "objective_signs"]


@dataclass(frozen=True)
class Batch:
    """One iteration of the search: its number, size and first trial number."""

    iteration: int
    size: int
    first: int


def plan(spec: SearchSpec) -> list[Batch]:
    """The iterations of a search: the initial design, then ``iterations`` batches."""
    opt = spec.optimizer
    batches = [Batch(0, opt.n_init, 0)]
    for k in range(1, opt.iterations + 1):
        batches.append(Batch(k, opt.batch_size, opt.n_init + (k - 1) * opt.batch_size))
    return batches


class Search(FinalStage):
    """One open study: its spec, store and search space."""

    def __init__(self, spec: SearchSpec, store: StudyStore, space: Any) -> None:
        self.spec = spec
        self.store = store
        self.space = space
        self.names = spec.objective_names()
        self.task_objectives = [o.label for o in spec.objectives.tasks]
        self.batches = plan(spec)
        self._outcomes: Any = None
        self._warm: list[TrialRecord] | None = None
        from mmmo.fidelity import Levels

        self.levels = Levels(spec)

    @property
    def outcomes(self) -> Any:
        """The result store of the study's storage (:class:`~mmmo.engine.outcomes.OutcomeStore`)."""
        if self._outcomes is None:
            from mmmo.engine.outcomes import OutcomeStore

            self._outcomes = OutcomeStore(self.store.storage)
        return self._outcomes

    @classmethod
    def open(cls, spec: SearchSpec, *, preflight: bool = True,
             storage_options: dict[str, Any] | None = None) -> Search:
        """Validate what can be checked cheaply, then open or create the study.

        Homology of the models and the objective/held-out tasks are checked before any
        expensive work (no weights are loaded).

        Raises:
            HomologyError, SpecError: the models, tasks or storage cannot be used.
            StudyError: an existing study with this name searches something else.
        """
        from mmmo.space import SearchSpace
        space = SearchSpace.from_spec(spec)
        if preflight:
            check_inputs(spec, storage=True, storage_options=storage_options)
        from mmmo.warmstart import snapshot

        store = StudyStore(spec.storage, spec.study_name, storage_options=storage_options)
        store.open_or_create(spec, dimension_names=list(space.names))
        snapshot(spec, store)
        return cls(spec, store, space)

    def warm_trials(self) -> list[TrialRecord]:
        """The warm-start trials of the study (donors', negative numbers; see
        :mod:`mmmo.warmstart`), read once."""
        if self._warm is None:
            from mmmo.warmstart import donor_trials

            self._warm = donor_trials(self.store) if self.spec.optimizer.warm_start else []
        return self._warm

    def pool(self) -> list[TrialRecord]:
        """The trials the pick and its candidates are chosen from: the warm-start ones, then the
        study's. With multi-fidelity, only those at the highest level any complete trial
        reached (a lower level's estimate is noisier: the best of many is biased upwards)."""
        trials = [*self.warm_trials(), *self.store.trials()]
        if not self.levels.enabled:
            return trials
        top = max((t.level for t in trials if t.status == "complete"), default=0)
        return [t for t in trials if t.level == top]

    # ------------------------------------------------------------------ optimizer and proposals

    def new_optimizer(self) -> Optimizer:
        """A fresh optimizer as the spec configures it (nothing told yet)."""
        opt = self.spec.optimizer
        n_tasks = len(self.spec.objectives.tasks)
        return make_optimizer(opt.strategy, self.space.dim, len(self.names), seed=opt.seed,
                              n_init=opt.n_init, rounding=self.spec.merge.rounding,
                              task_objectives=list(range(n_tasks)), **opt.settings)

    def replay(self, trials: Sequence[TrialRecord], *, upto: int | None) -> Optimizer:
        """An optimizer told the recorded trials.

        ``batch``: those of the iterations before ``upto``, batch by batch in iteration order,
        as an uninterrupted run told them. ``async`` (or ``upto`` None): every trial, in the
        order trials finished.
        """
        optimizer = self.new_optimizer()
        groups = [self.warm_trials()]  # warm start: the donors' trials, told first
        if upto is None or self.spec.optimizer.schedule == "async":
            groups.append(sorted(trials, key=_finish_order))
        else:
            groups += [sorted((t for t in trials if t.iteration == batch.iteration),
                              key=lambda t: t.number) for batch in self.batches[:upto]]
        for rows in groups:
            if not rows:
                continue
            X = np.array([t.x for t in rows], dtype=float)
            Y = np.array([_floats(t.values, len(self.names)) for t in rows])
            Yvar = np.array([_floats(t.stderrs, len(self.names)) for t in rows]) ** 2
            optimizer.tell(X, Y, Yvar)
        return optimizer

    def propose(self, iteration: int) -> Proposal:
        """The proposal of ``iteration``: the stored one, or a new one (written first).

        Raises:
            MmmoError: an earlier iteration still has unfinished trials.
        """
        stored = self.store.proposals()
        existing = {p.iteration: p for p in stored if p.kind == "new"}
        if iteration in existing:
            return existing[iteration]
        trials = self.store.trials()
        done = {t.number for t in trials}
        for p in existing.values():
            if p.iteration < iteration and any(t.number not in done for t in p.trials):
                name = self.store.name
                raise MmmoError("study", f"iteration {p.iteration} of '{name}' has unfinished "
                                "trials", fix=f"finish it first (`mmmo resume {name}`) before "
                                f"proposing iteration {iteration}")
        batch = self.batches[iteration]
        start = time.perf_counter()
        X = self.replay(trials, upto=iteration).ask(batch.size)
        crash_point(f"iteration:{iteration}:asked")
        proposed = []
        for i, x in enumerate(X):
            recipe = self.space.decode(x)
            proposed.append(ProposedTrial(number=batch.first + i, x=[float(v) for v in x],
                                          recipe_id=recipe.recipe_id,
                                          recipe=recipe_json(recipe)))
        proposal = Proposal(iteration=iteration, trials=proposed,
                            strategy=self.spec.optimizer.strategy,
                            sequence=len(stored), seconds=time.perf_counter() - start)
        self.store.write_proposal(proposal)
        return proposal

    def propose_promotions(self, iteration: int | None,
                           running: Sequence[int] = ()) -> Proposal | None:
        """The recipes the promotion rule moves up a fidelity level now, written before they
        are evaluated (None when there are none; see :mod:`mmmo.fidelity`).

        Args:
            iteration: ``batch``: decide from the trials of this iteration and the earlier ones
                (the same promotions on resume); None (``async``): from every trial.
            running: Trials in flight (not promoted while they run).
        """
        from mmmo.fidelity import promotions

        if not self.levels.enabled:
            return None
        stored = self.store.proposals()
        trials = self.store.trials()
        levels = {t.number: t.level for t in trials}
        busy = {(t.number, t.level) for p in stored for t in p.trials
                if levels.get(t.number, -1) < t.level}
        busy |= {(n, levels.get(n, -1) + 1) for n in running}
        chosen = promotions(self, trials, busy=busy, upto_iteration=iteration)
        if not chosen:
            return None
        sequence = len(stored)
        proposal = Proposal(
            iteration=sequence if iteration is None else iteration, kind="promote",
            sequence=sequence, strategy=self.spec.optimizer.strategy,
            trials=[ProposedTrial(number=t.number, x=t.x, recipe_id=t.recipe_id,
                                  recipe=t.recipe, level=level) for t, level in chosen])
        self.store.write_proposal(proposal)
        return proposal

    def propose_next(self, running: Sequence[int]) -> Proposal:
        """An asynchronous search's next recipe (one), written before it is evaluated.

        The optimizer is told every recorded trial in the order they finished, with the
        recipes of the trials ``running`` (and of any other unfinished proposal) as pending
        points.
        """
        proposals = self.store.proposals()
        trials = self.store.trials()
        done = {t.number for t in trials}
        pending = [t for p in proposals for t in p.trials if t.number not in done]
        del running  # every unfinished proposal is pending, running or not
        numbers = {t.number for p in proposals if p.kind == "new" for t in p.trials}
        number = max(numbers, default=-1) + 1
        sequence = len(proposals)
        start = time.perf_counter()
        X_pending = np.array([t.x for t in pending], dtype=float).reshape(-1, self.space.dim)
        x = self.replay(trials, upto=None).ask(1, pending=X_pending)[0]
        crash_point(f"propose:{sequence}:asked")
        recipe = self.space.decode(x)
        proposal = Proposal(iteration=sequence, sequence=sequence, strategy=self.spec.optimizer
                            .strategy, seconds=time.perf_counter() - start, trials=[
                                ProposedTrial(number=number, x=[float(v) for v in x],
                                              recipe_id=recipe.recipe_id,
                                              recipe=recipe_json(recipe))])
        self.store.write_proposal(proposal)
        return proposal

    def catch_up(self, iteration: int) -> bool:
        """Redo :meth:`update_surrogate` of a finished ``iteration`` if a crash cut it off.

        Returns:
            True when ``optimizer.json`` was behind and has been rewritten.
        """
        batch = self.batches[iteration]
        try:
            told = len(self.store.read_json("optimizer.json")["X"])
        except FileNotFoundError:
            told = -1
        if told >= batch.first + batch.size:
            return False
        self.update_surrogate(iteration)
        return True

    def update_surrogate(self, iteration: int | None) -> dict[str, Any]:
        """Tell the optimizer the results up to ``iteration`` (None: every recorded trial);
        store its state; return progress."""
        trials = self.store.trials()
        optimizer = self.replay(trials, upto=None if iteration is None else iteration + 1)
        self.store.write_json("optimizer.json", optimizer.state_dict())
        complete = [t for t in trials if t.status == "complete"]
        return {"iteration": iteration, "trials": len(trials), "complete": len(complete),
                "failed": len(trials) - len(complete), "budget": self.spec.optimizer.budget}

    # ------------------------------------------------------------------ trials

    def assemble(self, outcomes: Mapping[str, Any], *, sparsity: float | None) -> Any:
        """The trial's objective vector from its benchmark outcomes (by objective name).

        ``sparsity`` None while sparsity is an objective (the merge failed) gives a NaN there.
        """
        from mmmo.evaluation import assemble_trial

        tasks = self.spec.objectives.tasks
        sp = self.spec.objectives.sparsity
        value = (float("nan") if sparsity is None else sparsity) if sp.enabled else None
        return assemble_trial(tasks, [outcomes[t.label] for t in tasks], sparsity=value,
                              sparsity_name=sp.name)

    def trial_record(self, proposed: ProposedTrial, iteration: int, *, evaluation: Any,
                     merge: Mapping[str, Any] | None, error: Mapping[str, Any] | None = None,
                     timings: Mapping[str, float] | None = None, worker: str = "",
                     documents: Mapping[str, int] | None = None,
                     slot: int | None = None) -> TrialRecord:
        """A trial's record from its :meth:`assemble`'d evaluation and its merge info.

        A failed benchmark (or merge) makes the trial failed, with the first failure as its
        typed error; the optimizer is told NaN for what failed. Its ``order`` is the number of
        trials recorded before it (kept when a promoted trial's record is rewritten).
        """
        try:
            before = TrialRecord.model_validate(
                self.store.read_json(f"trials/{proposed.number:04d}.json"))
            order, history = before.order, dict(before.history)
            iteration, promoted_in = before.iteration, iteration
        except FileNotFoundError:
            order, history, promoted_in = len(self.store.list("trials")), {}, iteration
        failures = [f.model_dump(mode="json", exclude={"traceback"})
                    for f in evaluation.failures]
        if error is None and failures:
            error = {"kind": failures[0]["kind"], "message": f"{failures[0]['task']}: "
                     f"{failures[0]['message']}"[:500], "failures": failures}
        values = [_finite(v) for v in evaluation.values]
        history[str(proposed.level)] = {"values": values, "iteration": promoted_in,
                                        "documents": dict(documents or {})}
        return TrialRecord(
            number=proposed.number, iteration=iteration, recipe_id=proposed.recipe_id,
            x=proposed.x, recipe=proposed.recipe, level=proposed.level, order=order,
            documents=dict(documents or {}), history=history,
            params=self.space.recipe(proposed.recipe).params_table(),
            status="failed" if error is not None or evaluation.failed else "complete",
            objectives=dict(zip(evaluation.names, map(_finite, evaluation.raw_values),
                                strict=True)),
            values=values, stderrs=[_finite(v) for v in evaluation.stderrs],
            sparsity_by_group=dict((merge or {}).get("sparsity_by_group", {})),
            benchmarks={o.task: o.model_dump(mode="json", exclude={"doc_scores"})
                        for o in evaluation.outcomes},
            error=dict(error) if error else None, timings=dict(timings or {}), worker=worker,
            slot=slot)

    # ------------------------------------------------------------------ what a trial scores

    def trial_benchmarks(self, level: int) -> dict[str, list[Any]]:
        """The document chunks of each task objective a trial at ``level`` is scored on
        (levels 0 .. ``level``; without multi-fidelity one chunk, the task's subsample)."""
        return {t.label: self.levels.chunks(t, level) for t in self.spec.objectives.tasks}

    def combine(self, task_name: str, outcomes: Sequence[Any]) -> Any:
        """A task's outcome over its document chunks (see :func:`mmmo.fidelity.combine`)."""
        from mmmo.fidelity import combine

        del task_name
        return combine(outcomes)


def _finish_order(t: TrialRecord) -> tuple[int, int]:
    return (t.order if t.order is not None else t.number, t.number)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _floats(values: Sequence[float | None], m: int) -> list[float]:
    out = [np.nan if v is None else float(v) for v in values]
    return out + [np.nan] * (m - len(out))
