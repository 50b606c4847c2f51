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

from mmmo.errors import MmmoError, SpecError
from mmmo.hooks import crash_point
from mmmo.optimization import Constraint, Optimizer, make_optimizer, pick
from mmmo.spec import SearchSpec
from mmmo.study import Proposal, ProposedTrial, StudyStore, TrialRecord

__all__ = ["Batch", "Search", "natural_constraints"]


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


def natural_constraints(spec: SearchSpec) -> list[Constraint]:
    """The spec's constraints (natural scale) as bounds on maximised objective values."""
    signs = objective_signs(spec)
    out = []
    for c in spec.pick.constraints:
        s = signs[c.objective]
        for kind, bound in (("min", c.min), ("max", c.max)):
            if bound is None:
                continue
            flipped = kind if s > 0 else {"min": "max", "max": "min"}[kind]
            out.append(Constraint(objective=c.objective, kind=flipped, bound=s * bound))
    return out


def objective_signs(spec: SearchSpec) -> dict[str, float]:
    """+1 for maximised objectives, -1 for minimised (natural = sign * maximised)."""
    signs = {o.label: 1.0 if o.direction == "maximize" else -1.0 for o in spec.objectives.tasks}
    if spec.objectives.sparsity.enabled:
        signs[spec.objectives.sparsity.name] = -1.0
    return signs


class Search:
    """One open study: its spec, store and search space."""

    def __init__(self, spec: SearchSpec, store: StudyStore, space: Any) -> None:
        self.spec = spec
        self.store = store
        self.space = space
        self.names = spec.objective_names()
        self.task_objectives = [o.label for o in spec.objectives.tasks]
        self.batches = plan(spec)
        self._outcomes: Any = None

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
        from mmmo.study import check_storage

        space = SearchSpace.from_spec(spec)
        if preflight:
            check_inputs(spec)
            check_storage(spec.storage, storage_options=storage_options)
        store = StudyStore(spec.storage, spec.study_name, storage_options=storage_options)
        store.open_or_create(spec, dimension_names=list(space.names))
        return cls(spec, store, space)

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
        if upto is None or self.spec.optimizer.schedule == "async":
            groups = [sorted(trials, key=_finish_order)]
        else:
            groups = [sorted((t for t in trials if t.iteration == batch.iteration),
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
            RuntimeError: an earlier iteration still has unfinished trials.
        """
        existing = {p.iteration: p for p in self.store.proposals()}
        if iteration in existing:
            return existing[iteration]
        trials = self.store.trials()
        done = {t.number for t in trials}
        for p in existing.values():
            if p.iteration < iteration and any(t.number not in done for t in p.trials):
                raise RuntimeError(f"iteration {p.iteration} has unfinished trials; "
                                   f"finish it before proposing iteration {iteration}")
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
                            sequence=len(existing), seconds=time.perf_counter() - start)
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
            order = TrialRecord.model_validate(
                self.store.read_json(f"trials/{proposed.number:04d}.json")).order
        except FileNotFoundError:
            order = len(self.store.list("trials"))
        failures = [f.model_dump(mode="json", exclude={"traceback"})
                    for f in evaluation.failures]
        if error is None and failures:
            error = {"kind": failures[0]["kind"], "message": f"{failures[0]['task']}: "
                     f"{failures[0]['message']}"[:500], "failures": failures}
        return TrialRecord(
            number=proposed.number, iteration=iteration, recipe_id=proposed.recipe_id,
            x=proposed.x, recipe=proposed.recipe, level=proposed.level, order=order,
            documents=dict(documents or {}),
            params=self.space.recipe(proposed.recipe).params_table(),
            status="failed" if error is not None or evaluation.failed else "complete",
            objectives=dict(zip(evaluation.names, map(_finite, evaluation.raw_values),
                                strict=True)),
            values=[_finite(v) for v in evaluation.values],
            stderrs=[_finite(v) for v in evaluation.stderrs],
            sparsity_by_group=dict((merge or {}).get("sparsity_by_group", {})),
            benchmarks={o.task: o.model_dump(mode="json") for o in evaluation.outcomes},
            error=dict(error) if error else None, timings=dict(timings or {}), worker=worker,
            slot=slot)

    # ------------------------------------------------------------------ what a trial scores

    def trial_benchmarks(self, level: int) -> dict[str, list[Any]]:
        """The document ranges of each task objective a trial at ``level`` is scored on.

        Without multi-fidelity: one range per task, the task's ``limit`` (its seeded subsample).
        """
        from mmmo.evaluation.tasks import DocRange

        del level
        return {t.label: [DocRange(stop=t.limit)] for t in self.spec.objectives.tasks}

    def combine(self, task_name: str, outcomes: Sequence[Any]) -> Any:
        """A task's outcome over several document ranges (a failure if any range failed)."""
        del task_name
        failed = [o for o in outcomes if getattr(o, "status", "") == "failed"]
        return failed[0] if failed else outcomes[0]

    def final_docs(self, task_name: str) -> Any:
        """The documents the final table scores a task on."""
        from mmmo.evaluation.tasks import DocRange

        return DocRange(stop=self.spec.task(task_name).limit)

    # ------------------------------------------------------------------ the final table

    def final_rows(self, picked: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """Rows of the final table: ``(label, None)`` for the base and the sources, then
        ``(label, recipe JSON)`` for the baselines and the pick."""
        rows: list[tuple[str, dict[str, Any] | None]] = [
            (label, None) for label in self.reference_labels()]
        rows += [(name, recipe_json(recipe)) for name, recipe in self.baselines()]
        rows.append((f"pick (trial {picked['number']})", dict(picked["recipe"])))
        return rows

    def final_columns(self) -> list[str]:
        """Columns of the final table: the objective tasks, then the held-out tasks."""
        return [*self.task_objectives, *(h.label for h in self.spec.heldout)]

    def write_final(self, picked: Mapping[str, Any], table: Mapping[str, Any],
                    export: str) -> dict[str, Any]:
        """Write ``final.json`` (the pick, the score table, the export's URL); return it."""
        final = {"pick": dict(picked), "table": dict(table), "export": export,
                 "finished_at": time.time()}
        self.store.write_json("final.json", final)
        return final

    def reference_labels(self) -> list[str]:
        """Labels of the single models scored in the final table: the base, then sources."""
        return [self.spec.base.label, *(s.label for s in self.spec.sources)]

    def baselines(self) -> list[tuple[str, Any]]:
        """The spec's fixed-recipe baselines as ``(label, Recipe)``."""
        out = []
        for b in self.spec.baselines:
            method = b.method or self.spec.merge.method
            normalize = b.normalize
            if normalize is None and method == self.spec.merge.method:
                normalize = self.spec.merge.normalize
            recipe = self.space.fixed_recipe(method=method, weight=b.weight,
                                             density=b.density, normalize=normalize)
            out.append((b.label.replace("method", method), recipe))
        return out

    def score_table(self, rows: Sequence[str], columns: Sequence[str],
                    scores: Mapping[tuple[str, str], float]) -> dict[str, Any]:
        """The paper-style table: rows x tasks, plus averages over objectives, held-out, all.

        Returns:
            ``{"columns": [...], "rows": {row: {column: score | None}}}`` (JSON-able).
        """
        objective = set(self.task_objectives)
        table: dict[str, dict[str, float | None]] = {}
        for row in rows:
            cells = {c: scores.get((row, c)) for c in columns}
            groups = {"avg objectives": [c for c in columns if c in objective],
                      "avg held-out": [c for c in columns if c not in objective],
                      "avg all": list(columns)}
            for name, cols in groups.items():
                vals = [cells[c] for c in cols]
                ok = cols and all(v is not None for v in vals)
                cells[name] = float(np.mean(vals)) if ok else None
            table[row] = cells
        extra = ["avg objectives", *(["avg held-out"] if len(columns) > len(objective) else []),
                 "avg all"]
        return {"columns": [*columns, *extra], "rows": table}

    # ------------------------------------------------------------------ the pick

    def pick_summary(self) -> dict[str, Any]:
        """The chosen trial under the spec's pick policy, as stored in ``final.json``."""
        chosen, why = self.pick()
        return {"number": chosen.number, "recipe_id": chosen.recipe_id,
                "recipe": chosen.recipe, "objectives": chosen.objectives,
                "policy": self.spec.pick.policy, "reason": why}

    def pick(self, *, policy: str | None = None) -> tuple[TrialRecord, str]:
        """The chosen trial under the spec's pick policy (or ``policy``) and why.

        Raises:
            ValueError: no complete trial, or none satisfies the constraints.
        """
        trials = self.store.trials()
        Y = np.array([_floats(t.values, len(self.names)) for t in trials], dtype=float)
        if not len(Y) or not np.isfinite(Y).all(axis=1).any():
            raise MmmoError(f"no trial of study '{self.store.name}' completed, nothing to "
                            f"pick; see `mmmo status {self.store.name}` for the failures")
        rule = policy or self.spec.pick.policy
        primary = self.spec.pick.primary or self.names[0]
        constraints = natural_constraints(self.spec)
        idx = pick(Y, rule, names=self.names, primary=primary,
                   weights=self.spec.pick.weights or None, constraints=constraints)
        chosen = trials[idx]
        n_ok = int(np.isfinite(Y).all(axis=1).sum())
        why = {
            "primary": f"best {primary} ({chosen.objectives[primary]:.4g}) of {n_ok} complete "
                       "trials (ties broken by Pareto dominance)",
            "knee": "the knee of the Pareto front: closest to the ideal point after "
                    "normalising each objective over the front",
            "weighted": "highest weighted sum of normalised objectives, weights "
                        + (str(dict(self.spec.pick.weights)) if self.spec.pick.weights
                           else "equal"),
        }[rule]
        if constraints:
            why += "; subject to " + ", ".join(_describe(c) for c in self.spec.pick.constraints)
        return chosen, why


def recipe_json(recipe: Any) -> dict[str, Any]:
    """A recipe as stored and passed between tasks: its JSON plus its ``recipe_id``."""
    return {**recipe.model_dump(mode="json"), "recipe_id": recipe.recipe_id}


def _describe(c: Any) -> str:
    parts = []
    if c.min is not None:
        parts.append(f"{c.objective} >= {c.min:g}")
    if c.max is not None:
        parts.append(f"{c.objective} <= {c.max:g}")
    return " and ".join(parts)


def _finish_order(t: TrialRecord) -> tuple[int, int]:
    return (t.order if t.order is not None else t.number, t.number)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _floats(values: Sequence[float | None], m: int) -> list[float]:
    out = [np.nan if v is None else float(v) for v in values]
    return out + [np.nan] * (m - len(out))


def check_inputs(spec: SearchSpec, *, storage: bool = False) -> None:
    """Cheap checks before any expensive work; nothing is loaded or written.

    The compute device exists, the models are homologous (configs and headers only), every
    task resolves and reports its metric, and, with ``storage``, the store is reachable and
    writable and the study (if it exists) may be resumed with ``spec`` (see
    :func:`~mmmo.study.check_storage`, :func:`~mmmo.study.check_study`).

    Raises:
        SpecError, HomologyError, StudyError: one line naming the field and the fix.
    """
    from mmmo.evaluation import validate_tasks
    from mmmo.evaluation.vllm import preflight as engine_preflight

    check_device(spec.compute.device)
    _check_models(spec)
    engine_preflight(spec)
    validate_tasks(spec.objectives.tasks, field="objectives.tasks")
    validate_tasks(spec.heldout, field="heldout")
    if storage:
        from mmmo.study import check_storage, check_study

        check_storage(spec.storage)
        check_study(spec)


def check_device(device: str) -> None:
    """Raise a one-line SpecError when ``compute.device`` is not on this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (index and int(index) >= count):
            raise SpecError("compute.device", f"this machine has {count} CUDA device(s)",
                            value=device, fix="use auto or cpu, or an index below "
                            f"{max(count, 1)}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SpecError("compute.device", "MPS is not available on this machine",
                        value=device, fix="use auto or cpu")


def _check_models(spec: SearchSpec) -> None:
    """Homology, source by source, so that the error names the spec field."""
    from mmmo.errors import HomologyError
    from mmmo.merging import check_homology

    for i, src in enumerate(spec.sources):
        try:
            check_homology(spec.base, [src])
        except HomologyError as exc:
            text = str(exc)
            field = "base.path" if text.startswith("base") else f"sources[{i}].path"
            fix = ("check the path, or put the hub model in the local cache "
                   "(HF_HUB_OFFLINE=0 downloads it)" if "cannot be read" in text
                   else "use only fine-tunes of the base (same architecture, tensor names "
                   "and shapes, vocabulary)")
            raise HomologyError(f"{field}: {text}; fix: {fix}") from None
