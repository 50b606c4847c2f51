"""The whole search spec and its cross-field checks."""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from mmmo.errors import SpecError
from mmmo.spec.base import _NAME, _STUDY, ADMISSIBLE, FieldProblem, _Frozen
from mmmo.spec.budget import ConfirmSpec
from mmmo.spec.compute import ComputeSpec, EvaluationSpec
from mmmo.spec.models import (
    MergeSpec,
    ModelSpec,
    _check_bound,
    _check_read,
    _inert,
    method_parameters,
)
from mmmo.spec.search import BaselineSpec, OptimizerSpec, PickSpec
from mmmo.spec.tasks import ObjectivesSpec, TaskSpec


class SearchSpec(_Frozen):
    """A whole search: what to merge, what to optimise, where to store it, how to run it."""

    name: str
    description: str = ""
    base: ModelSpec
    sources: list[ModelSpec] = Field(min_length=1)
    merge: MergeSpec = Field(default_factory=MergeSpec)
    objectives: ObjectivesSpec
    heldout: list[TaskSpec] = Field(default_factory=list)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    pick: PickSpec = Field(default_factory=PickSpec)
    baselines: list[BaselineSpec] = Field(default_factory=lambda: [BaselineSpec()])
    """Fixed recipes scored beside the pick in the final table (default: the searched method
    with equal weights 1/n and density 0.5)."""
    storage: str = "./studies"
    """Where studies live: a local folder, file://..., s3://bucket/prefix or any fsspec URL."""
    study: str | None = None
    """Study name (default: ``name``); lowercase letters, digits and dashes."""
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    """The final table's scores on documents the search did not use."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise FieldProblem("must be letters, digits, '_', '.', '-'",
                               "rename it, e.g. 'qwen15-7b-mmmo'", value=name, has_value=True)
        return name

    @field_validator("study")
    @classmethod
    def _check_study(cls, study: str | None) -> str | None:
        if study is not None and not _STUDY.match(study):
            raise FieldProblem("must be 1-63 lowercase letters, digits and dashes",
                               "rename it, e.g. 'fixture-demo'", value=study, has_value=True)
        return study

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, url: str) -> str:
        from mmmo.storage import parse_storage

        try:
            parse_storage(url)
        except SpecError as exc:  # malformed: refused here, before anything can be written
            raise FieldProblem(exc.problem, exc.fix, value=url, has_value=True) from None
        return url

    @model_validator(mode="after")
    def _check_cross_fields(self) -> SearchSpec:
        self._check_models()
        self._check_objective_names()
        self._check_pick()
        self._check_baselines()
        self._check_budget()
        return self

    def _check_budget(self) -> None:
        fidelity = self.optimizer.fidelity
        if fidelity is not None and isinstance(fidelity.levels[0], int):
            for i, obj in enumerate(self.objectives.tasks):
                if not isinstance(obj.limit, int):
                    raise FieldProblem("counts need every objective's limit to be a count",
                                       f"give levels as fractions of the limit, or set "
                                       f"objectives.tasks[{i}].limit to a count",
                                       field="optimizer.fidelity.levels",
                                       value=fidelity.levels, has_value=True)
                if fidelity.levels[-1] < obj.limit:
                    raise FieldProblem(f"the last level must be the whole subsample "
                                       f"({obj.limit} documents of {obj.label})",
                                       f"end the levels with {obj.limit}",
                                       field="optimizer.fidelity.levels",
                                       value=fidelity.levels, has_value=True)
        if self.pick.use_confirmed and (not self.confirm.enabled or self.confirm.top_k < 1):
            raise FieldProblem("needs confirmed candidates", "set confirm.enabled: true and "
                               "confirm.top_k >= 1, or remove pick.use_confirmed",
                               field="pick.use_confirmed", value=True, has_value=True)

    def _check_models(self) -> None:
        per_model, _ = method_parameters(self.merge.method)
        labels = [s.label for s in self.sources]
        models = [(s.path, s.revision) for s in self.sources]
        for i, src in enumerate(self.sources):
            if src.path == self.base.path and src.revision == self.base.revision:
                raise FieldProblem("is the base model itself", "list only fine-tuned "
                                   "models of the base's family as sources",
                                   field=f"sources[{i}].path", value=src.path, has_value=True)
            if (src.path, src.revision) in models[:i]:
                raise FieldProblem(f"is the same model as sources[{models.index(models[i])}]",
                                   "list each source model once", field=f"sources[{i}].path",
                                   value=src.path, has_value=True)
            if src.label in labels[:i]:
                raise FieldProblem("two sources share this name", "give each source a "
                                   "distinct name", field=f"sources[{i}].name",
                                   value=src.label, has_value=True)
            for key, bound in src.parameters.items():
                _check_bound(key, bound, per_model, self.merge.method,
                             f"sources[{i}].parameters.{key}")
                _check_read(key, bound, self.merge.method, f"sources[{i}].parameters.{key}")
        if self.base.parameters:
            raise FieldProblem("the base takes no merge parameters", "move them to sources",
                               field="base.parameters", value=self.base.parameters,
                               has_value=True)

    def _check_objective_names(self) -> None:
        seen: set[str] = set()
        if self.objectives.sparsity.enabled:
            seen.add(self.objectives.sparsity.name)
        for i, obj in enumerate(self.objectives.tasks):
            if obj.label in seen:
                raise FieldProblem("two objectives share this name", "set a distinct "
                                   "name: for each objective", field=f"objectives.tasks[{i}]"
                                   ".name", value=obj.label, has_value=True)
            seen.add(obj.label)
        for i, task in enumerate(self.heldout):
            if task.label in seen:
                raise FieldProblem("is already the name of an objective or another held-out "
                                   "task", "set a distinct name: (the final table has one "
                                   "column per name)", field=f"heldout[{i}].name",
                                   value=task.label, has_value=True)
            seen.add(task.label)

    def _check_pick(self) -> None:
        names = self.objective_names()
        task_names = [o.label for o in self.objectives.tasks]
        if self.pick.primary is not None and self.pick.primary not in names:
            raise FieldProblem("is not an objective", f"use one of {names}",
                               field="pick.primary", value=self.pick.primary, has_value=True)
        for key in self.pick.weights:
            if key not in names:
                raise FieldProblem("is not an objective", f"use one of {names}",
                                   field=f"pick.weights.{key}", value=key, has_value=True)
        if self.pick.policy == "weighted" and not self.pick.weights:
            raise FieldProblem("policy 'weighted' needs weights", "add pick.weights: "
                               f"{{{task_names[0]}: 1.0, ...}}", field="pick.weights",
                               value={}, has_value=True)
        for i, con in enumerate(self.pick.constraints):
            if con.objective not in names:
                raise FieldProblem("is not an objective", f"use one of {names}",
                                   field=f"pick.constraints[{i}].objective",
                                   value=con.objective, has_value=True)

    def _check_baselines(self) -> None:
        n = len(self.sources)
        rows = {self.base.label, *(s.label for s in self.sources)}
        for i, b in enumerate(self.baselines):
            where = f"baselines[{i}]"
            method = b.method or self.merge.method
            per_model, shared = method_parameters(method)
            given = b.model_fields_set
            reads_density = "density" in per_model and "density" not in _inert(method)
            if "density" in given and b.density is not None and not reads_density:
                raise FieldProblem(f"{method} has no density", "remove density from this "
                                   "baseline (or choose a method that sparsifies, e.g. "
                                   "dare_ties)", field=f"{where}.density", value=b.density,
                                   has_value=True)
            if b.normalize is not None and "normalize" not in shared:
                raise FieldProblem(f"{method} has no normalize option", "remove normalize "
                                   "from this baseline", field=f"{where}.normalize",
                                   value=b.normalize, has_value=True)
            weight = 1.0 / n if b.weight is None else b.weight
            lo, hi = ADMISSIBLE["weight"]
            if not math.isfinite(weight) or not lo <= weight <= hi:
                raise FieldProblem("is outside the range mergekit accepts for weight",
                                   f"keep it within [{lo}, {hi}]", field=f"{where}.weight",
                                   value=b.weight, has_value=True)
            if weight <= 0:
                raise FieldProblem(f"every source weighs {weight:g}: the merge is the base "
                                   "model itself, or moves away from every source",
                                   f"use a positive weight, e.g. {1 / n:.3g} (= 1/{n})",
                                   field=f"{where}.weight", value=b.weight, has_value=True)
            normalize = b.normalize
            if normalize is None:
                normalize = (self.merge.normalize if method == self.merge.method else None)
                normalize = shared.get("normalize") if normalize is None else normalize
            if method == "linear" and normalize is False and abs(n * weight - 1) > 0.01:
                raise FieldProblem(f"the {n} weights sum to {n * weight:g}: linear without "
                                   "normalize scales the whole model by that sum",
                                   f"use weight {1 / n:.3g} (= 1/{n}), or normalize: true",
                                   field=f"{where}.weight", value=b.weight, has_value=True)
            if method.startswith("della") and reads_density and b.density is not None:
                eps = per_model.get("epsilon") or 0.0
                from mmmo.merging.recipe import della_valid

                if not della_valid(b.density, eps):
                    raise FieldProblem(f"{method} needs density +/- epsilon ({eps:g}) in "
                                       "(0, 1)", f"use a density in ({eps:g}, {1 - eps:g})",
                                       field=f"{where}.density", value=b.density,
                                       has_value=True)
            label = b.label.replace("method", method)
            if label in rows or label.startswith("pick"):
                raise FieldProblem("is already the name of a model or another baseline",
                                   "give each baseline a distinct name: (the final table has "
                                   "one row per name)", field=f"{where}.name", value=label,
                                   has_value=True)
            rows.add(label)

    def objective_names(self) -> list[str]:
        """Objective names in vector order: the tasks, then sparsity when enabled."""
        names = [o.label for o in self.objectives.tasks]
        if self.objectives.sparsity.enabled:
            names.append(self.objectives.sparsity.name)
        return names

    def task(self, name: str) -> TaskSpec:
        """The objective or held-out task called ``name``.

        Raises:
            KeyError: no task has that name.
        """
        for task in [*self.objectives.tasks, *self.heldout]:
            if task.label == name:
                return task
        raise KeyError(f"no objective or held-out task named {name!r}")

    @property
    def study_name(self) -> str:
        """The study's name: ``study`` or a slug of ``name``."""
        return self.study or re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:63]

    def with_overrides(self, **changes: Any) -> SearchSpec:
        """A copy with top-level fields replaced (e.g. ``storage=``, ``study=``), re-validated."""
        from mmmo.spec.loading import parse_spec

        data = self.model_dump(mode="json")
        data.update({k: v for k, v in changes.items() if v is not None})
        return parse_spec(data, source="override")

    def to_yaml(self) -> str:
        """The spec as YAML, every default written out (what a study stores)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
