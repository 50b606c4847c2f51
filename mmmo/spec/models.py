"""The models of a search (base and sources) and the merge: method, searched parameters."""

from __future__ import annotations

import difflib
import re
from functools import cache
from typing import Any

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmmo.spec.base import (
    _HUB_ID,
    ADMISSIBLE,
    SEARCH_DEFAULTS,
    TASK_ARITHMETIC_METHODS,
    Bound,
    FieldProblem,
    _base_dir,
    _Frozen,
    _is_local,
)


class ModelSpec(_Frozen):
    """A model of the family: local folder, hub id or ``fixture:models/<name>``."""

    path: str
    name: str | None = None
    revision: str | None = None
    parameters: dict[str, Bound] = Field(default_factory=dict)
    """Per-model override of ``merge.parameters`` (sources only)."""

    @field_validator("path")
    @classmethod
    def _check_path(cls, ref: str, info: ValidationInfo) -> str:
        ref = ref.strip()
        if not ref:
            raise FieldProblem("is empty", "give a local folder, a hub id like "
                               "'Qwen/Qwen1.5-7B', or fixture:models/<name>")
        local = _is_local(ref, _base_dir(info))
        if local is not None:
            if not (local / "config.json").is_file():
                raise FieldProblem(f"no model folder with a config.json at {local}",
                                   "point it at an HF model folder, or use a hub id",
                                   value=ref, has_value=True)
            return str(local)
        if ref.startswith("fixture:"):
            if not re.match(r"^fixture:(layered/)?models/", ref):
                raise FieldProblem("fixture models live under fixture:models/",
                                   "write fixture:models/<name> (or fixture:layered/models/"
                                   "<name>)", value=ref, has_value=True)
            return ref
        if not _HUB_ID.match(ref):
            raise FieldProblem("is neither an existing folder nor a hub id",
                               "check the path (relative paths resolve against the "
                               "spec's folder) or write a hub id like 'org/name'",
                               value=ref, has_value=True)
        return ref

    @property
    def label(self) -> str:
        """The model's short name: ``name``, else the last component of its path."""
        return self.name or self.path.rstrip("/").split("/")[-1].split(":")[-1]


class MergeSpec(_Frozen):
    """The merge method, its fixed settings and the per-model parameters the search varies."""

    method: str = "dare_ties"
    normalize: bool | None = None
    """mergekit's ``normalize``; None keeps the method's default, written out in every recipe."""
    int8_mask: bool = False
    random_seed: int = 0
    options: dict[str, float | bool] = Field(default_factory=dict)
    """Other shared (non-per-model) parameters of the method, e.g. ``rescale``, ``lambda``."""
    parameters: dict[str, Bound] = Field(default_factory=dict)
    """Bounds of per-model parameters; unlisted ones of the method get SEARCH_DEFAULTS."""
    layer_groups: int = Field(default=1, ge=1, le=64)
    """1 = one value per model; k > 1 = a k-point gradient over layers (mergekit lists)."""
    rounding: int = Field(default=2, ge=0, le=6)
    """Decimals a recipe's values are rounded to; rounded values identify a recipe."""

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str) -> str:
        if method not in TASK_ARITHMETIC_METHODS:
            close = difflib.get_close_matches(method, TASK_ARITHMETIC_METHODS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldProblem("is not a method of mergekit's task-arithmetic family",
                               f"{hint}use one of {', '.join(TASK_ARITHMETIC_METHODS)}",
                               value=method, has_value=True)
        return method

    @model_validator(mode="after")
    def _check_parameters(self) -> MergeSpec:
        per_model, shared = method_parameters(self.method)
        for key, value in self.options.items():
            if key not in shared or key in ("normalize", "int8_mask"):
                allowed = sorted(set(shared) - {"normalize", "int8_mask"})
                raise FieldProblem(f"'{key}' is not a shared option of {self.method}",
                                   f"use one of {allowed} (normalize/int8_mask are "
                                   "fields of merge)", field=f"options.{key}",
                                   value=value, has_value=True)
        for key, bound in self.parameters.items():
            _check_bound(key, bound, per_model, self.method, f"parameters.{key}")
            _check_read(key, bound, self.method, f"parameters.{key}")
        return self

    def searched_parameters(self) -> list[str]:
        """Per-model parameters of the method, in mergekit's declaration order."""
        return list(method_parameters(self.method)[0])

    def default_bound(self, key: str) -> Bound:
        """The bound of ``key`` for a model that does not override it."""
        return self.parameters.get(key, SEARCH_DEFAULTS.get(key, (0.0, 1.0)))

    def fixed_settings(self) -> dict[str, Any]:
        """Shared settings written into every recipe (``normalize`` always explicit)."""
        _, shared = method_parameters(self.method)
        out: dict[str, Any] = dict(self.options)
        if "normalize" in shared:
            out["normalize"] = shared["normalize"] if self.normalize is None else self.normalize
        if "int8_mask" in shared:
            out["int8_mask"] = self.int8_mask
        return out


@cache
def method_parameters(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """mergekit's own declaration of ``method``: (per-model params, shared params) -> default.

    Read from ``mergekit.merge_methods.get(method).spec`` so the parameters are declared once,
    by mergekit, not in a second hand-kept map.
    """
    from mergekit.merge_methods import get

    per_model: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for p in get(method).spec.parameters:
        target = shared if p.scope.value == "shared" else per_model
        target[p.name] = None if p.required else p.default
    return per_model, shared


def _inert(method: str) -> frozenset[str]:
    from mmmo.merging.recipe import inert_parameters

    return inert_parameters(method)


def _check_read(key: str, bound: Bound, method: str, field: str) -> None:
    """A parameter that mergekit declares for ``method`` but never reads cannot be set."""
    if key in _inert(method):
        raise FieldProblem(f"mergekit's {method} declares '{key}' but never reads it",
                           f"remove it (or use a method that reads {key}, e.g. dare_ties)",
                           field=field, value=bound, has_value=True)


def _check_bound(key: str, bound: Bound, per_model: dict[str, Any], method: str,
                 field: str) -> None:
    if key not in per_model:
        raise FieldProblem(f"'{key}' is not a per-model parameter of {method}",
                           f"use one of {list(per_model)}", field=field,
                           value=bound, has_value=True)
    lo_ok, hi_ok = ADMISSIBLE.get(key, (float("-inf"), float("inf")))
    low, high = (bound, bound) if isinstance(bound, float | int) else bound
    if low > high:
        raise FieldProblem("low bound is above the high bound", "write [low, high] "
                           "with low <= high", field=field, value=list(bound), has_value=True)
    if low < lo_ok or high > hi_ok or (key == "density" and low <= 0.0):
        raise FieldProblem(f"is outside the range mergekit accepts for {key}",
                           f"keep it within [{lo_ok}, {hi_ok}]"
                           + (" and above 0" if key == "density" else ""),
                           field=field, value=bound, has_value=True)
