"""Shared by the spec's modules: the validator error, the frozen base model, reference and
name patterns."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
)

#: mergekit's task-arithmetic family: the methods a recipe may use.
TASK_ARITHMETIC_METHODS: tuple[str, ...] = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
)

#: Default search bounds of per-model parameters, and the range mergekit accepts for each.
SEARCH_DEFAULTS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.1, 1.0),
    "gamma": (0.0, 0.05),
    "epsilon": (0.0, 0.2),
}
ADMISSIBLE: dict[str, tuple[float, float]] = {
    "weight": (-10.0, 10.0),
    "density": (0.0, 1.0),
    "gamma": (0.0, 0.5),
    "epsilon": (0.0, 0.5),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STUDY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class FieldProblem(ValueError):
    """Raised inside validators: a problem and its fix, optionally at a sub-field."""

    def __init__(self, problem: str, fix: str, *, field: str | None = None,
                 value: object = None, has_value: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.field = problem, fix, field
        self.value, self.has_value = value, has_value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Bound = float | tuple[float, float]
"""A searched parameter's bounds ``[low, high]``, or a single number that fixes it."""


def _is_local(ref: str, base_dir: Path | None) -> Path | None:
    """The local path ``ref`` names, or None when it is a hub id / fixture / task name."""
    if ref.startswith("fixture:"):
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    explicit = ref.startswith((".", "/", "~")) or ref.endswith((".yaml", ".yml"))
    return path.resolve() if explicit or path.exists() else None


def _base_dir(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("base_dir")
