"""A trial's objective vector and standard errors from one call."""

from __future__ import annotations

import json
import math

import pytest

from mmmo.evaluation import (
    BenchmarkResult,
    EvalFailure,
    TrialEvaluation,
    assemble_trial,
)
from mmmo.spec import ObjectiveSpec


def result(label: str, score: float, stderr: float | None) -> BenchmarkResult:
    return BenchmarkResult(task=label, metric="acc", filter="none", score=score, stderr=stderr,
                           n_docs=10, n_total=10, doc_indices=None, docs_hash="all",
                           batch_size=8, seconds=1.0, request_seconds=0.5, forward_seconds=0.4)


def test_assemble_is_direction_aware():
    objectives = [ObjectiveSpec(task="task_a", name="a"),
                  ObjectiveSpec(task="task_b", name="b", direction="minimize"),
                  ObjectiveSpec(task="task_c", name="c")]
    outcomes = [result("a", 0.75, 0.1), result("b", 0.25, None),
                EvalFailure(kind="timeout", task="c", message="time limit of 5 s reached")]
    trial = assemble_trial(objectives, outcomes, sparsity=123.5)
    assert trial.names == ["a", "b", "c", "sparsity"]
    assert trial.directions == ["maximize", "minimize", "maximize", "minimize"]
    assert trial.values[:2] == [0.75, -0.25] and math.isnan(trial.values[2])
    assert trial.values[3] == -123.5
    assert trial.raw_values[:2] == [0.75, 0.25] and trial.raw_values[3] == 123.5
    assert trial.stderrs[0] == 0.1 and math.isnan(trial.stderrs[1]) and trial.stderrs[3] == 0.0
    assert trial.failed and [f.task for f in trial.failures] == ["c"]
    assert trial.seconds == 2.0
    text = json.dumps(trial.model_dump(mode="json"))
    again = TrialEvaluation.model_validate(json.loads(text))
    assert isinstance(again.outcomes[2], EvalFailure) and again.outcomes[2].kind == "timeout"
    assert again.values[:2] == trial.values[:2] and math.isnan(again.values[2])
    with pytest.raises(ValueError, match="keep objective order"):
        assemble_trial(objectives, outcomes[::-1], sparsity=None)
