"""mm-mo's errors: one line from field, problem, value and fix; the exit code from the type."""

from __future__ import annotations

import pickle

import pytest

from mmmo import errors
from mmmo.errors import (
    EvaluationError,
    HomologyError,
    LeaseHeldError,
    MmmoError,
    NoFeasibleTrialError,
    SpecError,
    StorageUnavailableError,
    StudyError,
)


def test_the_line_is_built_from_the_parts() -> None:
    err = SpecError("merge.layer_groups", "is more than the models' 4 layers", value=80,
                    fix="use 1 to 4", source="my.yaml")
    assert str(err) == ("my.yaml: merge.layer_groups: is more than the models' 4 layers "
                        "(got 80); fix: use 1 to 4")
    assert (err.field, err.problem, err.value, err.fix) == (
        "merge.layer_groups", "is more than the models' 4 layers", 80, "use 1 to 4")
    assert str(SpecError("x", "is empty", has_value=False)) == "x: is empty"
    assert str(MmmoError("a bare message")) == "a bare message"
    assert str(StudyError("study", "'demo' is held", fix="wait")) == "study 'demo' is held; fix: wait"


@pytest.mark.parametrize(("cls", "code"), [
    (SpecError, 2), (HomologyError, 2), (StudyError, 2), (LeaseHeldError, 2),
    (errors.ModelUnavailableError, 2), (errors.DestinationExistsError, 2),
    (NoFeasibleTrialError, 3), (StorageUnavailableError, 1), (errors.MergeError, 1),
    (EvaluationError, 1), (errors.NoCompleteTrialError, 1)])
def test_exit_code_follows_from_the_type_and_survives_pickling(cls: type, code: int) -> None:
    err = cls("field", "problem", fix="fix it")
    back = pickle.loads(pickle.dumps(err))
    assert cls.exit_code == code and type(back) is cls
    assert str(back) == str(err) and back.field == "field" and back.fix == "fix it"


def test_evaluation_error_carries_its_failure_record() -> None:
    record = {"kind": "timeout", "task": "dbl", "message": "no answer in 5 s"}
    err = EvaluationError(record)
    assert err.args[0] == record == err.failure
    assert str(err) == "evaluation of dbl: timeout: no answer in 5 s"
    back = pickle.loads(pickle.dumps(err))
    assert back.args[0] == record and str(back) == str(err)


def test_no_feasible_trial_keeps_the_nearest_trials() -> None:
    err = NoFeasibleTrialError("pick.constraints", "none meets acc >= 0.9",
                               nearest=[(3, {"acc": 0.8}, ["acc >= 0.9"])])
    back = pickle.loads(pickle.dumps(err))
    assert back.nearest == [(3, {"acc": 0.8}, ["acc >= 0.9"])] and back.exit_code == 3
