"""Tasks: what lm-eval scores (objectives, held-out tasks, sparsity)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from mmmo.spec.base import _NAME, FieldProblem, _base_dir, _Frozen, _is_local


class TaskSpec(_Frozen):
    """One lm-eval task and how to score it."""

    task: str
    """lm-eval task name, a task YAML path, or ``fixture:tasks/<name>.yaml``."""
    name: str | None = None
    metric: str = "acc"
    filter: str = "none"
    limit: Annotated[int, Field(ge=1)] | float | None = None
    """Documents per evaluation: a count >= 1 or a fraction in (0, 1]; None = all."""
    sample_seed: int = 1234
    """Seed of the fixed subsample (the same documents for every trial)."""
    num_fewshot: int | None = Field(default=None, ge=0)
    apply_chat_template: bool = False
    gen_kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, ge=1)
    """Overrides ``compute.batch_size`` for this task."""

    @field_validator("task")
    @classmethod
    def _check_task(cls, ref: str, info: ValidationInfo) -> str:
        ref = ref.strip()
        if ref.startswith("fixture:"):
            if not re.match(r"^fixture:(layered/)?tasks/.+\.ya?ml$", ref):
                raise FieldProblem("fixture tasks are YAML files under fixture:tasks/",
                                   "write fixture:tasks/<name>.yaml (or fixture:layered/"
                                   "tasks/<name>.yaml)", value=ref,
                                   has_value=True)
            return ref
        local = _is_local(ref, _base_dir(info))
        if local is not None:
            if not local.is_file():
                raise FieldProblem(f"no task YAML at {local}", "fix the path (relative "
                                   "paths resolve against the spec's folder)", value=ref,
                                   has_value=True)
            return str(local)
        if not re.match(r"^[\w.-]+$", ref):
            raise FieldProblem("is neither a task YAML file nor an lm-eval task name",
                               "give an lm-eval task name like 'gsm8k' or a path to a "
                               "task .yaml", value=ref, has_value=True)
        return ref

    @field_validator("limit")
    @classmethod
    def _check_limit(cls, limit: int | float | None) -> int | float | None:
        if isinstance(limit, float) and not 0.0 < limit <= 1.0:
            raise FieldProblem("must be a count >= 1 or a fraction in (0, 1]",
                               "set a positive count (e.g. 100) or a fraction (e.g. 0.25)",
                               value=limit, has_value=True)
        return limit

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and not _NAME.match(name):
            raise FieldProblem("must be letters, digits, '_', '.', '-'",
                               "rename it, e.g. 'gsm8k_subset'", value=name, has_value=True)
        return name

    @property
    def label(self) -> str:
        """The task's short name: ``name``, else the YAML stem or the task name."""
        if self.name:
            return self.name
        stem = self.task.rstrip("/").split("/")[-1]
        return re.sub(r"\.ya?ml$", "", stem)


class ObjectiveSpec(TaskSpec):
    """A task whose score the search optimises."""

    direction: Literal["maximize", "minimize"] = "maximize"


class SparsitySpec(_Frozen):
    """The paper's sparsity objective: sum |merged - base| over all parameters, minimised."""

    enabled: bool = True
    name: str = "sparsity"


class ObjectivesSpec(_Frozen):
    """Task objectives plus the sparsity objective."""

    tasks: list[ObjectiveSpec] = Field(min_length=1)
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)

    @field_validator("sparsity", mode="before")
    @classmethod
    def _bool_sparsity(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value
