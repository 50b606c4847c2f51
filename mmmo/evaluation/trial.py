"""A trial's objective vector (task scores + sparsity) and its standard errors.

The engine runs each benchmark as its own step (own cache key, own retries) and then
:func:`assemble_trial` builds the vector from the outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmmo.evaluation.records import BenchmarkResult, EvalFailure, TrialEvaluation
from mmmo.spec import ObjectiveSpec

__all__ = ["assemble_trial"]

_NAN = float("nan")


def assemble_trial(objectives: Sequence[ObjectiveSpec],
                   outcomes: Sequence[BenchmarkResult | EvalFailure], *,
                   sparsity: float | None = None, sparsity_name: str = "sparsity",
                   seconds: float | None = None) -> TrialEvaluation:
    """The optimizer's view of a trial from its benchmarks' outcomes (in objective order).

    Args:
        objectives: The task objectives, in vector order.
        outcomes: One outcome per objective, same order.
        sparsity: The recipe's sparsity (sum of ``|merged - base|``), minimised; None leaves
            sparsity out of the vector.
        sparsity_name: Its name in ``names``.
        seconds: Wall time to record (default: the sum of the outcomes' times).

    Returns:
        The :class:`TrialEvaluation`: ``values`` maximised (minimised objectives negated,
        ``-sparsity`` last, NaN for failures), ``stderrs`` (0 for sparsity, NaN when unknown),
        ``raw_values`` on the natural scale.

    Raises:
        ValueError: ``outcomes`` does not match ``objectives`` in length or labels.
    """
    if len(outcomes) != len(objectives):
        raise ValueError(f"{len(outcomes)} outcomes for {len(objectives)} objectives")
    names, directions = [o.label for o in objectives], [o.direction for o in objectives]
    values, stderrs, raw = [], [], []
    for objective, outcome in zip(objectives, outcomes, strict=True):
        if outcome.task != objective.label:
            raise ValueError(f"outcome of '{outcome.task}' given for objective "
                             f"'{objective.label}' (keep objective order)")
        if isinstance(outcome, BenchmarkResult):
            sign = 1.0 if objective.direction == "maximize" else -1.0
            raw.append(outcome.score)
            values.append(sign * outcome.score + 0.0)  # + 0.0: no -0.0
            stderrs.append(_NAN if outcome.stderr is None else outcome.stderr)
        else:
            raw.append(_NAN)
            values.append(_NAN)
            stderrs.append(_NAN)
    if sparsity is not None:
        names.append(sparsity_name)
        directions.append("minimize")
        raw.append(float(sparsity))
        values.append(-float(sparsity))
        stderrs.append(0.0)
    failed = any(isinstance(o, EvalFailure) for o in outcomes) or any(
        not math.isfinite(v) for v in values)
    total = sum(o.seconds for o in outcomes) if seconds is None else seconds
    return TrialEvaluation(names=names, directions=directions, outcomes=list(outcomes),
                           sparsity=sparsity, values=values, stderrs=stderrs, raw_values=raw,
                           failed=failed, seconds=total)
