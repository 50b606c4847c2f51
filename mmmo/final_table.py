"""The search's last stage, Prefect-free: the pick, its candidates, the confirmed final table.

The pick is chosen by the search's estimates (each objective's seeded subsample); beside it
the ``confirm.top_k`` best other candidates of the Pareto front under the same policy. The
final table scores the base, the sources, the baselines and those candidates on documents
no search subsample used (``confirm``: the rest of each objective task's seeded ranking, up to
``confirm.max_documents``), and keeps the candidates' search estimates beside their confirmed
scores: the best of many noisy estimates is biased upwards (a winner's curse), the confirmed
score is not. With ``pick.use_confirmed`` the pick is chosen again among the candidates, by
their confirmed scores. Held-out tasks are scored on their own ``limit``: no search used them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmmo.errors import NoCompleteTrialError
from mmmo.optimization import Constraint, order

__all__ = ["FinalStage", "natural_constraints", "objective_signs"]


def objective_signs(spec: Any) -> dict[str, float]:
    """+1 for maximised objectives, -1 for minimised (natural = sign * maximised)."""
    signs = {o.label: 1.0 if o.direction == "maximize" else -1.0 for o in spec.objectives.tasks}
    if spec.objectives.sparsity.enabled:
        signs[spec.objectives.sparsity.name] = -1.0
    return signs


def natural_constraints(spec: Any) -> list[Constraint]:
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


class FinalStage:
    """What :class:`~mmmo.search.Search` does once its budget is spent (a mixin)."""

    spec: Any
    store: Any
    space: Any
    names: list[str]
    task_objectives: list[str]

    def pool(self) -> list[Any]:
        """The trials the pick considers (the search's)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the pick

    def constraints(self) -> list[Constraint]:
        """The pick's constraints on maximised values."""
        return natural_constraints(self.spec)

    def rank(self, trials: Sequence[Any], *, policy: str | None = None,
             front_only: bool = False) -> list[Any]:
        """``trials`` that meet the pick's constraints, best first under its policy (or
        ``policy``); with ``front_only``, the Pareto-optimal ones only."""
        Y = np.array([_floats(t.values, len(self.names)) for t in trials], dtype=float)
        name = self.store.name
        if not len(Y) or not np.isfinite(Y).all(axis=1).any():
            raise NoCompleteTrialError("pick", f"no trial of study '{name}' completed: "
                                       "nothing to pick",
                                       fix=f"see `mmmo status {name}` for the failures")
        pick = self.spec.pick
        signs = objective_signs(self.spec)
        idx = order(Y.reshape(len(trials), len(self.names)), policy or pick.policy,
                    names=self.names, primary=pick.primary or self.names[0],
                    weights=pick.weights or None, constraints=self.constraints(),
                    normalize=pick.normalize, front_only=front_only,
                    labels=[t.number for t in trials], signs=[signs[n] for n in self.names])
        return [trials[int(i)] for i in idx]

    def pick(self, *, policy: str | None = None) -> tuple[Any, str]:
        """The chosen trial under the spec's pick policy (or ``policy``) and why.

        Raises:
            NoCompleteTrialError: no complete trial.
            NoFeasibleTrialError: none satisfies the constraints (it names the nearest).
        """
        trials = self.pool()
        chosen = self.rank(trials, policy=policy)[0]
        return chosen, self._why(policy or self.spec.pick.policy, chosen, trials)

    def _why(self, rule: str, chosen: Any, trials: Sequence[Any], *,
             confirmed: bool = False) -> str:
        pick = self.spec.pick
        primary = pick.primary or self.names[0]
        n_ok = sum(t.status == "complete" for t in trials)
        scores = "confirmed scores" if confirmed else "estimates"
        why = {
            "primary": f"best {primary} ({chosen.objectives[primary]:.4g}) of {n_ok} complete "
                       "trials (ties broken by Pareto dominance)",
            "knee": "the knee of the Pareto front: closest to the ideal point after "
                    "normalising each objective over the front",
            "weighted": ("highest weighted sum of normalised objectives" if pick.normalize
                         else "highest weighted sum of the objectives' own values")
                        + ", weights " + (str(dict(pick.weights)) if pick.weights
                                          else "equal"),
        }[rule]
        if confirmed:
            why = f"{why}, among {n_ok} candidates, by their {scores}"
        if pick.constraints:
            why += "; subject to " + ", ".join(_describe(c) for c in pick.constraints)
        return why

    def pick_summary(self) -> dict[str, Any]:
        """The chosen trial and the front's best other candidates, as ``final.json`` keeps them
        (``{"number", "recipe_id", "recipe", "objectives", "policy", "reason",
        "candidates": [{"number", "recipe_id", "recipe", "objectives"}, ...]}``)."""
        trials = self.pool()
        chosen = self.rank(trials)[0]
        front = [t for t in self.rank(trials, front_only=True) if t.number != chosen.number]
        k = self.spec.confirm.top_k if self.spec.confirm.enabled else 0
        return {**_summary(chosen), "policy": self.spec.pick.policy,
                "normalize": self.spec.pick.normalize,
                "reason": self._why(self.spec.pick.policy, chosen, trials),
                "candidates": [_summary(t) for t in front[:k]]}

    def pick_confirmed(self, picked: Mapping[str, Any],
                       confirmed: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
        """With ``pick.use_confirmed``: the pick chosen again among the candidates, by their
        confirmed task scores (``confirmed[number][task]``; sparsity as measured)."""
        from mmmo.study import TrialRecord

        if not self.spec.pick.use_confirmed:
            return dict(picked)
        everyone = [dict(picked), *picked.get("candidates", [])]
        by_number = {t.number: t for t in self.pool()}
        rows = []
        for cand in everyone:
            record = by_number[cand["number"]]
            scores = confirmed.get(cand["number"], {})
            if not all(name in scores for name in self.task_objectives):
                continue  # a candidate whose confirmation failed is not chosen
            values = list(_floats(record.values, len(self.names)))
            for j, name in enumerate(self.names):
                if name in scores:
                    values[j] = objective_signs(self.spec)[name] * scores[name]
            rows.append(TrialRecord.model_validate({**record.model_dump(), "values": values}))
        if not rows:
            return dict(picked)
        chosen = self.rank(rows)[0]
        others = [c for c in everyone if c["number"] != chosen.number]
        return {**_summary(by_number[chosen.number]), "policy": self.spec.pick.policy,
                "normalize": self.spec.pick.normalize, "by": "confirmed",
                "reason": self._why(self.spec.pick.policy, chosen, rows, confirmed=True),
                "candidates": [{k: v for k, v in c.items() if k in _SUMMARY} for c in others]}

    # ------------------------------------------------------------------ the final table

    def final_docs(self, task_name: str) -> Any:
        """The documents the final table scores a task on: for an objective, the documents no
        search subsample used (``confirm``), else its subsample; a held-out task's own."""
        from mmmo.evaluation.tasks import DocRange

        task = self.spec.task(task_name)
        confirm = self.spec.confirm
        if task_name not in self.task_objectives or not confirm.enabled:
            return DocRange(stop=task.limit)
        if confirm.limit == "rest":
            return DocRange(start=task.limit, size=confirm.max_documents)
        if isinstance(confirm.limit, float):
            return DocRange(start=task.limit, share=confirm.limit, size=confirm.max_documents)
        return DocRange(start=task.limit, size=min(confirm.limit, confirm.max_documents or
                                                   confirm.limit))

    def final_rows(self, picked: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """Cells' rows: ``(label, None)`` for the base and the sources, ``(label, recipe)`` for
        the baselines, then ``("trial <n>", recipe)`` for the pick and its candidates."""
        rows: list[tuple[str, dict[str, Any] | None]] = [
            (label, None) for label in self.reference_labels()]
        rows += [(name, recipe_json(recipe)) for name, recipe in self.baselines()]
        for cand in [picked, *picked.get("candidates", [])]:
            rows.append((f"trial {cand['number']}", dict(cand["recipe"])))
        return rows

    def final_columns(self) -> list[str]:
        """Columns of the final table: the objective tasks, then the held-out tasks."""
        return [*self.task_objectives, *(h.label for h in self.spec.heldout)]

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

    def final_table(self, picked: Mapping[str, Any], scores: Mapping[tuple[str, str], float],
                    documents: Mapping[str, int]) -> dict[str, Any]:
        """The table of the final stage, rows labelled for the reader: references, baselines,
        ``pick (trial n)`` and ``trial m (front)``; search estimates of the trials beside.

        Args:
            picked: The final pick (with its candidates).
            scores: ``(cell row, task) -> score`` as computed (rows ``trial <n>`` for trials).
            documents: Documents each column was scored on (its first row's count).
        """
        numbers = [picked["number"], *(c["number"] for c in picked.get("candidates", []))]
        label = {f"trial {n}": (f"pick (trial {n})" if n == picked["number"]
                                else f"trial {n} (front)") for n in numbers}
        rows = [r for r, _ in self.final_rows(picked)]
        renamed = {(label.get(r, r), c): v for (r, c), v in scores.items()}
        table = self.score_table([label.get(r, r) for r in rows], self.final_columns(),
                                 renamed)
        summaries = {c["number"]: c for c in [picked, *picked.get("candidates", [])]}
        table["estimates"] = {label[f"trial {n}"]: {t: summaries[n]["objectives"].get(t)
                                                    for t in self.task_objectives}
                              for n in numbers}
        confirm = self.spec.confirm
        table["documents"] = dict(documents)
        table["confirmed"] = bool(confirm.enabled)
        return table

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

    def write_final(self, picked: Mapping[str, Any], table: Mapping[str, Any],
                    export: str) -> dict[str, Any]:
        """Write ``final.json`` (the pick, the score table, the export's URL); return it."""
        final = {"pick": dict(picked), "table": dict(table), "export": export,
                 "finished_at": time.time()}
        self.store.write_json("final.json", final)
        return final


_SUMMARY = ("number", "recipe_id", "recipe", "objectives")


def _summary(trial: Any) -> dict[str, Any]:
    return {"number": trial.number, "recipe_id": trial.recipe_id, "recipe": trial.recipe,
            "objectives": trial.objectives}


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


def _floats(values: Sequence[float | None], m: int) -> list[float]:
    out = [np.nan if v is None else float(v) for v in values]
    return out + [np.nan] * (m - len(out))
