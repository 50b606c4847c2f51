"""What an evaluation produces: a benchmark's result or its typed failure, and a trial's vector.

Every record is a frozen pydantic model that survives ``model_dump(mode="json")`` ->
``json.dumps`` -> ``model_validate``: non-finite floats are written as JSON constants (``NaN``),
which Python's :mod:`json` reads back. :class:`BenchmarkResult` and :class:`EvalFailure` carry a
``status`` literal, so a list of outcomes (:data:`Outcome`) validates back to the right types.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BenchmarkResult",
    "EvalFailure",
    "FailureKind",
    "Outcome",
    "TrialEvaluation",
]

FailureKind = Literal["exception", "timeout", "nan", "oom"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class BenchmarkResult(_Record):
    """One task's score on one model: the unit of work of a trial (its own cache key)."""

    status: Literal["ok"] = "ok"
    task: str
    """The task's label (``TaskSpec.label``)."""
    metric: str
    filter: str
    score: float
    """The metric on the evaluated documents (natural scale, as lm-eval reports it)."""
    stderr: float | None
    """lm-eval's standard error of ``score`` (None where lm-eval reports none, e.g. one doc)."""
    n_docs: int
    """Documents evaluated (all leaf tasks of a group together)."""
    n_total: int
    """Documents the task has (all leaf tasks of a group together)."""
    doc_indices: dict[str, list[int]] | None
    """Per leaf task, the sorted indices of the evaluated documents; None = every document."""
    docs_hash: str
    """Short hash of ``doc_indices`` (equal across trials for a given task, limit and seed)."""
    batch_size: int | str
    """Batch size that produced the result (half the requested one after an OOM retry)."""
    seconds: float
    """Wall time of the whole benchmark: task checkout, requests, model, metrics."""
    request_seconds: float
    """Time inside the LM's request methods (tokenisation, batching and the forward passes)."""
    forward_seconds: float
    """Time inside the model's forward passes (measured by forward hooks)."""
    oom_retries: int = 0
    doc_scores: dict[str, list[list[float]]] | None = None
    """Per leaf task, ``[doc_id, metric value]`` of every evaluated document, when the metric
    is a mean over documents (what results on disjoint document slices are combined from);
    None for other aggregations."""
    raw: dict[str, Any] = Field(default_factory=dict)
    """lm-eval's output for this task, JSON-safe; per-document samples only on request."""


class EvalFailure(_Record):
    """A benchmark that raised, timed out, ran out of memory or scored NaN: data, not a crash."""

    status: Literal["failed"] = "failed"
    kind: FailureKind
    task: str
    message: str
    """One line: what happened."""
    batch_size: int | str | None = None
    """For ``oom``: the batch size that failed (after the half-size retry, if one was made)."""
    seconds: float = 0.0
    traceback: str = ""


Outcome = Annotated[BenchmarkResult | EvalFailure, Field(discriminator="status")]
"""A benchmark's outcome; validates back from JSON to the right type."""


class TrialEvaluation(_Record):
    """A trial's objectives in one record: per-objective outcomes and the optimizer's vector.

    Vectors are in objective order: the task objectives as given, then sparsity (when given).
    ``values`` is what a maximising optimizer sees: scores as they are for ``maximize``, negated
    for ``minimize``, ``-sparsity`` last; NaN for a failed objective. ``stderrs`` holds the
    standard errors in the same order (0 for sparsity, NaN where unknown or failed);
    ``raw_values`` holds the natural-scale values (score, sparsity).
    """

    names: list[str]
    directions: list[Literal["maximize", "minimize"]]
    outcomes: list[Outcome]
    """One per task objective, in objective order."""
    sparsity: float | None = None
    values: list[float]
    stderrs: list[float]
    raw_values: list[float]
    failed: bool
    """True when any task objective failed (its value is NaN)."""
    seconds: float = 0.0

    @property
    def failures(self) -> list[EvalFailure]:
        """The failed objectives' records."""
        return [o for o in self.outcomes if isinstance(o, EvalFailure)]

    def as_dict(self) -> dict[str, float]:
        """Objective name -> maximised value."""
        return dict(zip(self.names, self.values, strict=True))


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, or not finite."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
