"""Spec sections about how a search spends and reports its documents: fidelity, confirmation.

- ``optimizer.fidelity`` (:class:`FidelitySpec`): successive halving over nested document
  subsets of each objective's search subsample;
- ``confirm`` (:class:`ConfirmSpec`): the final table scores the pick, the best candidates of
  the front and the reference rows on documents no search subsample used.

Both are validated here; cross-field checks (against the objectives' limits and the tasks'
sizes) live in :class:`mmmo.spec.SearchSpec` and in the input checks of ``mmmo run``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ConfirmSpec", "FidelitySpec"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _problem(problem: str, fix: str, **kwargs: object) -> ValueError:
    from mmmo.spec.base import FieldProblem

    return FieldProblem(problem, fix, **kwargs)  # type: ignore[arg-type]


Level = Annotated[int, Field(ge=1)] | float


class FidelitySpec(_Frozen):
    """Multi-fidelity evaluation: successive halving over nested document levels.

    Each new recipe is scored on the first level's documents; it is promoted to the next level
    (scored on that level's extra documents only: a level's documents contain the lower
    level's) when it is among the best ``1/eta`` of the recipes scored at its level, ranked by
    the pick's policy. The surrogate learns every recipe at its highest level, with the
    scores' standard errors as observation noise (a lower level is an unbiased, noisier
    estimate of the same score).
    """

    levels: list[Level] = Field(min_length=2)
    """Documents per level: fractions in (0, 1] of each objective's ``limit`` (its search
    subsample), or counts (then every objective's ``limit`` must be a count); increasing; the
    last is the whole subsample (1.0, or a count at least every objective's limit)."""
    eta: float = Field(default=3.0, gt=1.0)
    """Promotion rate: the best ``floor(n / eta)`` of the ``n`` recipes scored at a level move
    up."""

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, levels: list[int | float]) -> list[int | float]:
        kinds = {type(v) for v in levels}
        if len(kinds) > 1:
            raise _problem("mixes counts and fractions", "write all counts (e.g. [30, 100]) "
                           "or all fractions (e.g. [0.25, 1.0])", value=levels, has_value=True)
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise _problem("must increase", "list the levels from the fewest documents to "
                           "the most", value=levels, has_value=True)
        if kinds == {float} and (levels[0] <= 0 or levels[-1] != 1.0):
            raise _problem("fractions must lie in (0, 1] and end with 1.0",
                           "end with 1.0, the whole subsample (e.g. [0.25, 1.0])",
                           value=levels, has_value=True)
        return levels


class ConfirmSpec(_Frozen):
    """Confirmation of the final table on documents no search subsample used."""

    enabled: bool = True
    limit: Literal["rest"] | Annotated[int, Field(ge=1)] | float = "rest"
    """Per objective task: ``rest`` (every document the search did not use, up to
    ``max_documents``), a count of them, or a fraction of them."""
    max_documents: int | None = Field(default=200, ge=1)
    """At most this many confirmation documents per objective task (None: no cap)."""
    top_k: int = Field(default=2, ge=0)
    """Candidates of the Pareto front confirmed beside the pick (the best ones under the pick's
    policy; ``pick.use_confirmed`` chooses among them by their confirmed scores)."""

    @field_validator("limit")
    @classmethod
    def _check_limit(cls, limit: str | int | float) -> str | int | float:
        if isinstance(limit, float) and not 0.0 < limit <= 1.0:
            raise _problem("must be rest, a count >= 1 or a fraction in (0, 1]",
                           "e.g. rest, 200 or 0.5", value=limit, has_value=True)
        return limit
