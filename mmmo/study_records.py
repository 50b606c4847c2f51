"""The records of a study: proposals (written before they are evaluated) and trials.

Plain pydantic documents, one JSON file each in the study store (:mod:`mmmo.study`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Proposal", "ProposedTrial", "TrialRecord", "TrialStatus", "utcnow"]

TrialStatus = Literal["complete", "failed"]


def utcnow() -> str:
    """Now, as an ISO-8601 UTC timestamp."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProposedTrial(_Record):
    """One unit of work of a proposal: a recipe to evaluate at a fidelity level.

    ``level`` 0 is a new recipe (the lowest level, or the only one); a higher level promotes
    the recipe of trial ``number`` (already evaluated at the level below) to that level.
    """

    number: int
    x: list[float]
    recipe_id: str
    recipe: dict[str, Any]
    level: int = 0


class Proposal(_Record):
    """What the engine decided to evaluate next, stored before any of it is evaluated.

    ``kind`` ``new``: recipes the optimizer proposed (a batch iteration's, or one recipe of an
    asynchronous search); ``promote``: recipes promoted to a higher fidelity level.
    ``sequence`` orders every proposal of the study (its file name); ``iteration`` is the
    batch iteration a proposal belongs to (in an asynchronous search, its sequence).
    """

    iteration: int
    trials: list[ProposedTrial]
    strategy: str
    kind: Literal["new", "promote"] = "new"
    sequence: int = -1
    seconds: float = 0.0
    created_at: str = Field(default_factory=utcnow)

    def model_post_init(self, _context: Any) -> None:
        if self.sequence < 0:  # studies from before sequences: one proposal per iteration
            self.sequence = self.iteration


class TrialRecord(_Record):
    """A finished trial (complete or failed), written whole as one JSON document."""

    number: int
    iteration: int
    recipe_id: str
    x: list[float]
    recipe: dict[str, Any]
    params: dict[str, float | list[float]] = Field(default_factory=dict)
    """The recipe's searched values, flat (``"<source>.<parameter>"``), for tables."""
    status: TrialStatus
    level: int = 0
    """The fidelity level the objectives were measured at (0 without multi-fidelity)."""
    order: int | None = None
    """How many trial records were written before this one first was: the order trials
    finished in (an asynchronous search tells the optimizer in this order)."""
    documents: dict[str, int] = Field(default_factory=dict)
    """Documents scored per task objective (all levels so far together)."""
    history: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per fidelity level reached (``"0"``, ``"1"``, ...): its maximised ``values``, the
    ``iteration`` it was reached in and its ``documents``."""
    objectives: dict[str, float | None] = Field(default_factory=dict)
    """Natural-scale values by objective name (score, or the L1 sparsity); None if failed."""
    values: list[float | None] = Field(default_factory=list)
    """The maximised vector the optimizer is told (None where failed)."""
    stderrs: list[float | None] = Field(default_factory=list)
    sparsity_by_group: dict[str, float] = Field(default_factory=dict)
    benchmarks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per objective: the benchmark result or its typed failure (JSON)."""
    error: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds per step (``merge_s``, ``eval_<task>_s``) and, for trials run by the engine's
    own executors, when it started and ended on its slot (``started_at``/``ended_at``, Unix)."""
    worker: str = ""
    slot: int | None = None
    """The device slot it ran on (in the executor's numbering)."""
    finished_at: str = Field(default_factory=utcnow)

    @property
    def trial_id(self) -> str:
        """Zero-padded trial number, the record's file name."""
        return f"{self.number:04d}"
