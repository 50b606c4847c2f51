"""How the search runs and ends: optimizer, pick, baselines."""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mmmo.spec.base import FieldProblem, _Frozen
from mmmo.spec.budget import FidelitySpec
from mmmo.spec.models import MergeSpec

_SPEC_SET = {"n_init", "rounding", "task_objectives"}
"""Strategy settings the spec sets itself (from optimizer.n_init, merge.rounding, objectives)."""


class OptimizerSpec(_Frozen):
    """Which strategy proposes recipes, and the evaluation budget."""

    strategy: str = "mmmo"
    n_init: int = Field(default=10, ge=1)
    batch_size: int = Field(default=5, ge=1)
    iterations: int = Field(default=4, ge=0)
    seed: int = 0
    fidelity: FidelitySpec | None = None
    """Multi-fidelity evaluation (successive halving over nested document levels); None: every
    recipe is scored on each objective's whole subsample."""
    warm_start: list[str] = Field(default_factory=list)
    """Studies (``<storage>/<study>`` URLs or paths) whose trials are told to the optimizer
    before the first ask, without evaluating them again: same models, method, search space and
    objective tasks required. They count for the front, not for the budget."""
    schedule: Literal["batch", "async"] = "batch"
    """``batch``: the paper's synchronous iterations (propose ``batch_size``, evaluate them all,
    update); ``async``: whenever a slot frees, ask for one recipe with the trials in flight as
    pending points (no slot waits for the slowest trial of a batch). The budget is the same."""
    ask_ahead: bool = True
    """``async``: ask for the next recipe while every slot is busy (the trials in flight as
    pending points), so a slot that frees starts its next trial at once instead of waiting for
    the GPs to fit; ``false`` asks only once a slot freed (the proposal then knows that
    slot's result). Ignored by ``batch`` and by a single slot run inline."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Strategy settings, validated by the strategy's own settings model."""

    @model_validator(mode="after")
    def _check_strategy(self) -> OptimizerSpec:
        from mmmo import optimization

        names = optimization.strategy_names()
        if self.strategy not in names:
            close = difflib.get_close_matches(self.strategy, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldProblem("is not a known strategy", f"{hint}use one of "
                               f"{', '.join(names)}", field="strategy",
                               value=self.strategy, has_value=True)
        for key in sorted(_SPEC_SET):
            if key in self.settings:
                where = {"n_init": "optimizer.n_init", "rounding": "merge.rounding",
                         "task_objectives": "objectives"}[key]
                raise FieldProblem(f"'{key}' is set by the spec itself",
                                   f"remove it here; set {where} instead",
                                   field=f"settings.{key}", value=self.settings[key],
                                   has_value=True)
        model = optimization.settings_model(self.strategy)
        try:
            model(**self.settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            allowed = ", ".join(sorted(set(model.model_fields) - _SPEC_SET))
            problem = ("is not a setting" if err["type"] == "extra_forbidden"
                       else err["msg"].split(",")[0].lower())
            raise FieldProblem(f"{problem} of strategy {self.strategy}",
                               f"settings of {self.strategy} are: {allowed}" if allowed else
                               f"{self.strategy} takes no settings: remove optimizer.settings",
                               field=f"settings.{key}", value=err.get("input"),
                               has_value="input" in err) from None
        return self

    @property
    def budget(self) -> int:
        """Total evaluations: ``n_init + batch_size * iterations``."""
        return self.n_init + self.batch_size * self.iterations


class ConstraintSpec(_Frozen):
    """A bound on an objective's natural value (sparsity: an L1 norm; tasks: a score)."""

    objective: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_side(self) -> ConstraintSpec:
        if self.min is None and self.max is None:
            raise FieldProblem("needs a bound", "add min: <value> and/or max: <value>",
                               value=self.objective, has_value=True, field="objective")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldProblem("min is above max: no value satisfies both",
                               "write min <= max (min is a lower bound, max an upper one)",
                               value={"min": self.min, "max": self.max}, has_value=True)
        for side in ("min", "max"):
            bound = getattr(self, side)
            if bound is not None and not math.isfinite(bound):
                raise FieldProblem("must be a finite number", f"write a number, or leave "
                                   f"{side} out", field=side, value=bound, has_value=True)
        return self


class PickSpec(_Frozen):
    """How the final recipe is chosen from the evaluated ones."""

    policy: Literal["primary", "knee", "weighted"] = "primary"
    primary: str | None = None
    """Objective whose best score wins under ``primary`` (default: the first task)."""
    weights: dict[str, float] = Field(default_factory=dict)
    normalize: bool = True
    """``weighted``: min-max normalise each objective over the candidates before weighting
    (objectives on different scales become comparable), or, False, weight the objectives' own
    values (a weighted sum of the scores as they are: equal weights on accuracies pick the
    best average)."""
    use_confirmed: bool = False
    """Choose among the pick and the ``confirm.top_k`` best candidates by their confirmed
    scores (documents the search did not use) instead of their search estimates."""
    constraints: list[ConstraintSpec] = Field(default_factory=list)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for key, w in weights.items():
            if not math.isfinite(w) or w < 0:
                raise FieldProblem("must be a finite weight >= 0", "give each objective a "
                                   "weight >= 0 (0 ignores it)", field=key, value=w,
                                   has_value=True)
        if weights and not any(weights.values()):
            raise FieldProblem("are all 0: every trial would tie", "give at least one "
                               "objective a positive weight", value=weights, has_value=True)
        return weights


class BaselineSpec(_Frozen):
    """A fixed recipe reported beside the pick (the paper's fixed-recipe baselines)."""

    name: str | None = None
    method: str | None = None
    """Default: ``merge.method``."""
    weight: float | None = None
    """Every source's weight; default ``1 / number of sources``."""
    density: float | None = Field(default=0.5, gt=0.0, le=1.0)
    """Every source's density, for methods that have one."""
    normalize: bool | None = None
    """Default: ``merge.normalize`` when the method is the searched one, else mergekit's."""

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str | None) -> str | None:
        return None if method is None else MergeSpec._check_method(method)

    @property
    def label(self) -> str:
        """``name``, or e.g. ``dare_ties w=0.33 d=0.5``."""
        if self.name:
            return self.name
        w = "1/n" if self.weight is None else f"{self.weight:g}"
        return f"{self.method or 'method'} w={w} d={self.density:g}"
