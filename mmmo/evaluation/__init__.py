"""Objectives over a live model: lm-eval tasks on the resident merged model, and held-out tables.

- :func:`validate_tasks`: check task references, datasets, metrics and filters up front.
- :func:`benchmark_key` / :func:`evaluate_benchmark`: one task on one model, the unit of work
  (seeded subsample, typed failures, time limit, OOM retry).
- :func:`assemble_trial`: a trial's maximised objective vector and standard errors.
- :mod:`~mmmo.evaluation.backend`: what serves a slot's model (in-process HF, or vLLM).

Importing this package does not import lm-eval (that happens on first use).
"""

from __future__ import annotations

from mmmo.evaluation.benchmark import EVAL_VERSION, benchmark_key, evaluate_benchmark
from mmmo.evaluation.lm import clear_lm_cache, get_lm, release_lm
from mmmo.evaluation.records import (
    BenchmarkResult,
    EvalFailure,
    FailureKind,
    Outcome,
    TrialEvaluation,
)
from mmmo.evaluation.tasks import (
    TaskRegistry,
    default_registry,
    select_docs,
    task_fingerprint,
    validate_tasks,
)
from mmmo.evaluation.trial import assemble_trial

__all__ = [
    "EVAL_VERSION",
    "BenchmarkResult",
    "EvalFailure",
    "FailureKind",
    "Outcome",
    "TaskRegistry",
    "TrialEvaluation",
    "assemble_trial",
    "benchmark_key",
    "clear_lm_cache",
    "default_registry",
    "evaluate_benchmark",
    "get_lm",
    "release_lm",
    "select_docs",
    "task_fingerprint",
    "validate_tasks",
]
