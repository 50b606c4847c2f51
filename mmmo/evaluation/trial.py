"""A trial's objective vector (task scores + sparsity) and its standard errors, in one call.

:func:`evaluate_trial` runs every objective's benchmark on the live model and assembles the
vector. A flow that runs each benchmark as its own task (own cache key, own retries) calls
:func:`evaluate_benchmark` per objective and then :func:`assemble_trial` on the outcomes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmmo.evaluation.benchmark import DEFAULT_BOOTSTRAP_ITERS, evaluate_benchmark
from mmmo.evaluation.records import BenchmarkResult, EvalFailure, TrialEvaluation
from mmmo.evaluation.tasks import TaskRegistry
from mmmo.spec import ObjectiveSpec

__all__ = ["assemble_trial", "evaluate_trial"]

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


def evaluate_trial(model: Any, tokenizer: Any, objectives: Sequence[ObjectiveSpec], *,
                   sparsity: float | None, sparsity_name: str = "sparsity",
                   batch_size: int | str = 32, device: str | None = None,
                   timeout_s: float | None = None, registry: TaskRegistry | None = None,
                   bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
                   max_workers: int = 1) -> TrialEvaluation:
    """Evaluate every objective on the live model and return the trial's vector.

    Args:
        model: The resident merged model (evaluated where it lives).
        tokenizer: Its tokenizer.
        objectives: The task objectives, in vector order.
        sparsity: The recipe's sparsity (None: not an objective).
        sparsity_name: Sparsity's name in the vector.
        batch_size: Default batch size (a task's own ``batch_size`` wins).
        device: Expected device of the model (None/``auto``: wherever it is).
        timeout_s: Time limit per benchmark.
        registry: Task registry (default: the process-wide one).
        bootstrap_iters: Bootstrap draws for metrics without a closed-form stderr.
        max_workers: Benchmarks run at once in threads. Safe (timing, cancellation and task
            objects are per thread; requests sharing a tokenizer run one at a time, since HF
            tokenizers are not thread-safe), so only task loading, request building and
            metrics overlap. The model must not change meanwhile.

    Returns:
        The :class:`TrialEvaluation` (see :func:`assemble_trial`).
    """
    start = time.perf_counter()

    def one(objective: ObjectiveSpec) -> BenchmarkResult | EvalFailure:
        return evaluate_benchmark(model, tokenizer, objective, batch_size=batch_size,
                                  device=device, timeout_s=timeout_s, registry=registry,
                                  bootstrap_iters=bootstrap_iters)

    if max_workers > 1 and len(objectives) > 1:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bench") as pool:
            outcomes = list(pool.map(one, objectives))
    else:
        outcomes = [one(objective) for objective in objectives]
    return assemble_trial(objectives, outcomes, sparsity=sparsity, sparsity_name=sparsity_name,
                          seconds=time.perf_counter() - start)
