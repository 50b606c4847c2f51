"""Multi-fidelity evaluation: nested document levels, combined results, the promotion rule.

Levels (``optimizer.fidelity.levels``) are nested prefixes of each objective task's seeded
document ranking (:class:`~mmmo.evaluation.tasks.DocRange`): level ``i`` scores the first
``k_i`` documents of the search's subsample, so a lower level's documents are in every higher
one. A recipe promoted from level ``i - 1`` to ``i`` is scored on the documents
``[k_{i-1}, k_i)`` only (one benchmark, its own cache key); its level-``i`` result is the
combination of its chunk results (:func:`combine`: the per-document values pooled, mean and
standard error recomputed), so no document is ever scored twice and a resumed or repeated
level re-uses every chunk.

Promotion (successive halving, asynchronous like ASHA): among the ``n`` complete trials that
reached level ``i``, the best ``floor(n / eta)`` by the pick's policy on their level-``i``
objective values (:func:`mmmo.optimization.order`) are promoted to ``i + 1``, from the highest
level down. In a ``batch`` search the rule is applied after each iteration, to the trials of
that iteration and the earlier ones (so a resumed search decides the same promotions); in an
``async`` one, whenever a slot frees, before a new recipe is asked for.

The surrogate learns every trial at the highest level it reached, told the scores' squared
standard errors as observation noise: a level is an unbiased estimate of the same score on
fewer documents, i.e. the same function observed with more noise, which a fixed-noise GP
weighs correctly. (A multi-fidelity GP with the level as an input is for fidelities that are
biased, e.g. shorter training; here it would spend hyperparameters on a difference that is
zero in expectation.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmmo.evaluation.tasks import DocRange

__all__ = ["Levels", "combine"]


class Levels:
    """The fidelity levels of a spec (one level, the whole subsample, without fidelity)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        fidelity = spec.optimizer.fidelity
        self.levels: list[int | float] = list(fidelity.levels) if fidelity else [1.0]
        self.eta = fidelity.eta if fidelity else math.inf
        self.enabled = fidelity is not None

    @property
    def top(self) -> int:
        """The highest level's index."""
        return len(self.levels) - 1

    def stop(self, task: Any, level: int) -> int | float | None:
        """The ``DocRange.stop`` of ``level`` for ``task`` (a limit of the task's documents)."""
        limit, value = task.limit, self.levels[level]
        if level == self.top:
            return limit
        if isinstance(value, int):  # counts (the spec checked that the limits are counts)
            return min(value, int(limit))
        if limit is None:
            return value
        if isinstance(limit, float):
            return limit * value
        return max(1, round(limit * value))

    def chunk(self, task: Any, level: int) -> DocRange:
        """The documents level ``level`` adds to the level below (all of level 0's at 0)."""
        stop = self.stop(task, level)
        return DocRange(stop=stop) if level == 0 else DocRange(start=self.stop(task, level - 1),
                                                                stop=stop)

    def chunks(self, task: Any, level: int) -> list[DocRange]:
        """The chunks whose results make up ``level`` (levels 0 .. ``level``)."""
        return [self.chunk(task, i) for i in range(level + 1)]


def combine(outcomes: Sequence[Any]) -> Any:
    """One task's result over disjoint document chunks (their union), or the first failure.

    The per-document values (``doc_scores``) are pooled: the score is their mean, the
    standard error their sample standard deviation over ``sqrt(n)`` (lm-eval's for a mean).
    """
    from mmmo.evaluation import BenchmarkResult, EvalFailure

    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if isinstance(o, EvalFailure)]
    if failed:
        return failed[0]
    if any(o.doc_scores is None for o in outcomes):
        first = outcomes[0]
        return EvalFailure(kind="exception", task=first.task, message=f"{first.metric} is not "
                           "a mean over documents: its levels cannot be combined")
    pooled: dict[str, list[list[float]]] = {}
    for o in outcomes:
        for leaf, rows in o.doc_scores.items():
            pooled.setdefault(leaf, []).extend(rows)
    values = [v for rows in pooled.values() for _, v in rows]
    indices = {leaf: sorted(int(d) for d, _ in rows) for leaf, rows in sorted(pooled.items())}
    from mmmo.evaluation.tasks import docs_hash

    first = outcomes[0]
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return BenchmarkResult(
        task=first.task, metric=first.metric, filter=first.filter,
        score=float(np.mean(values)), stderr=stderr, n_docs=len(values),
        n_total=first.n_total, doc_indices=indices, docs_hash=docs_hash(indices),
        batch_size=outcomes[-1].batch_size, seconds=sum(o.seconds for o in outcomes),
        request_seconds=sum(o.request_seconds for o in outcomes),
        forward_seconds=sum(o.forward_seconds for o in outcomes),
        oom_retries=sum(o.oom_retries for o in outcomes),
        doc_scores={leaf: sorted(rows) for leaf, rows in pooled.items()},
        raw={"combined_from": [o.docs_hash for o in outcomes]})


def promotions(search: Any, trials: Sequence[Any], *, busy: set[tuple[int, int]],
               upto_iteration: int | None = None) -> list[tuple[Any, int]]:
    """``(trial, next level)`` for every trial the promotion rule moves up now.

    Args:
        search: The open search (its spec's fidelity, objectives and pick policy).
        trials: The recorded trials.
        busy: ``(trial number, level)`` already proposed and not finished (not promoted again).
        upto_iteration: Only trials of this iteration and the earlier ones count (``batch``).
    """
    from mmmo.optimization import order

    levels = Levels(search.spec)
    if not levels.enabled:
        return []
    pick = search.spec.pick
    constraints = search.constraints()
    pool = [t for t in trials if upto_iteration is None or t.iteration <= upto_iteration]
    out: list[tuple[Any, int]] = []
    for level in range(levels.top - 1, -1, -1):
        scored = [t for t in pool if _reached(t, level, upto_iteration)]
        k = math.floor(len(scored) / levels.eta)
        if k == 0:
            continue
        Y = np.asarray([t.history[str(level)]["values"] for t in scored], dtype=float)
        try:
            best = order(Y, pick.policy, names=search.names, primary=pick.primary,
                         weights=pick.weights or None, constraints=constraints,
                         normalize=pick.normalize)[:k]
        except ValueError:  # nothing satisfies the constraints yet
            continue
        for i in best:
            t = scored[int(i)]
            if str(level + 1) not in t.history and (t.number, level + 1) not in busy:
                out.append((t, level + 1))
    return out


def _reached(trial: Any, level: int, upto_iteration: int | None) -> bool:
    """Whether ``trial`` had a complete level-``level`` result by ``upto_iteration``."""
    entry = trial.history.get(str(level))
    if entry is None or any(v is None for v in entry["values"]):
        return False
    return upto_iteration is None or entry["iteration"] <= upto_iteration
