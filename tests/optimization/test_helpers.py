"""Pareto front, reference point, hypervolume and final-pick helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.utils.multi_objective.hypervolume import infer_reference_point

from mmmo.errors import NoCompleteTrialError, NoFeasibleTrialError, SpecError
from mmmo.optimization import (
    Constraint,
    hypervolume,
    hypervolume_curve,
    infer_ref_point,
    order,
    pareto_mask,
    pick,
)

NAN = np.nan


def test_pareto_mask_ignores_failed_rows_and_keeps_ties():
    Y = np.array([[1.0, 2.0], [2.0, 1.0], [0.5, 0.5], [NAN, 9.0], [1.0, 2.0]])
    assert pareto_mask(Y).tolist() == [True, True, False, False, True]
    assert pareto_mask(np.full((2, 2), NAN)).tolist() == [False, False]
    assert pareto_mask(np.empty((0, 3))).shape == (0,)


def test_hypervolume_known_values():
    Y = np.array([[1.0, 2.0], [2.0, 1.0], [NAN, 5.0], [0.5, 0.5]])
    assert hypervolume(Y, np.zeros(2)) == pytest.approx(3.0)
    assert hypervolume(Y, np.array([3.0, 3.0])) == 0.0
    Y3 = np.array([[1.0, 1.0, 1.0]])
    assert hypervolume(Y3, np.zeros(3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="objectives"):
        hypervolume(Y, np.zeros(3))


def test_hypervolume_curve_is_cumulative():
    Y = np.array([[1.0, 1.0], [NAN, NAN], [0.5, 0.5], [2.0, 1.0], [1.0, 2.0]])
    assert hypervolume_curve(Y, np.zeros(2)) == pytest.approx([1.0, 1.0, 1.0, 2.0, 3.0])


def test_infer_ref_point_is_botorch_rule_on_the_front():
    Y = np.array([[1.0, 3.0], [3.0, 1.0], [0.0, 0.0], [NAN, 1.0]])
    expected = infer_reference_point(torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.double))
    np.testing.assert_allclose(infer_ref_point(Y), expected.numpy())
    np.testing.assert_allclose(infer_ref_point(Y), [0.8, 0.8])
    with pytest.raises(ValueError, match="no successful"):
        infer_ref_point(np.full((2, 2), NAN))


NAMES = ["acc", "gsm", "sparsity"]
# acc and gsm are scores; sparsity is stored as -g (maximised).
Y_PICK = np.array(
    [
        [0.60, 0.30, -9.0],  # 0: best acc, dense
        [0.55, 0.50, -5.0],  # 1: balanced
        [0.40, 0.60, -2.0],  # 2: best gsm, sparse
        [NAN, 0.90, -1.0],  # 3: failed
        [0.60, 0.20, -9.5],  # 4: ties acc with 0 but dominated by it
        [0.30, 0.10, -1.5],  # 5: sparsest successful
    ]
)


def test_pick_primary_is_the_papers_rule_with_pareto_tie_break():
    assert pick(Y_PICK, "primary", names=NAMES) == 0
    assert pick(Y_PICK, "primary", names=NAMES, primary="gsm") == 2
    Y = Y_PICK[[4, 0]]
    assert pick(Y, "primary", names=NAMES) == 1


def test_pick_knee_and_weighted():
    assert pick(Y_PICK, "knee", names=NAMES) in {1, 2}
    assert pick(Y_PICK, "weighted", names=NAMES, weights={"gsm": 1.0}) == 2
    assert pick(Y_PICK, "weighted", names=NAMES, weights=[1.0, 0.0, 0.0]) in {0, 4}
    assert pick(Y_PICK, "weighted", names=NAMES, weights={"sparsity": 1.0}) == 5
    with pytest.raises(ValueError, match="non-negative"):
        pick(Y_PICK, "weighted", names=NAMES, weights=[-1.0, 0.0, 0.0])
    with pytest.raises(SpecError, match="unknown objectives"):
        pick(Y_PICK, "weighted", names=NAMES, weights={"mmlu": 1.0})


def test_raw_weighting_and_the_ranking_of_every_row():
    # equal weights on two accuracies: their own values pick the best sum (row 0: 1.10 vs
    # 1.06); min-max normalised, gsm's narrower span weighs more and row 1 wins (1.15 vs 1.14)
    w = {"acc": 1.0, "gsm": 1.0}
    Y = np.array([[0.90, 0.20, -1.0], [0.56, 0.50, -1.0], [0.50, 0.15, -1.0]])
    assert pick(Y, "weighted", names=NAMES, weights=w, normalize=False) == 0
    assert pick(Y, "weighted", names=NAMES, weights=w) == 1
    ranked = order(Y_PICK, "weighted", names=NAMES, weights=w, normalize=False)
    assert ranked.tolist() == [1, 2, 0, 4, 5]  # every successful row, best first; 3 failed
    assert ranked[0] == pick(Y_PICK, "weighted", names=NAMES, weights=w, normalize=False)
    front = order(Y_PICK, "weighted", names=NAMES, weights=w, normalize=False, front_only=True)
    assert front.tolist() == [1, 2, 0, 5]  # row 4 (dominated by 0) is not a candidate
    # ties (rows 0 and 4 share the best acc): the non-dominated row first, under every policy
    assert order(Y_PICK, "primary", names=NAMES).tolist()[:2] == [0, 4]
    assert order(Y_PICK[[4, 0]], "weighted", names=NAMES, weights=[1.0, 0.0, 0.0])[0] == 1


def test_pick_with_constraints():
    sparse = ("sparsity", "min", -5.0)  # g <= 5
    assert pick(Y_PICK, "primary", names=NAMES, constraints=[sparse]) == 1
    gsm_floor = Constraint(objective="gsm", kind="min", bound=0.55)
    assert pick(Y_PICK, "primary", names=NAMES, constraints=[sparse, gsm_floor]) == 2
    acc_cap = {"objective": "acc", "kind": "max", "bound": 0.5}
    assert pick(Y_PICK, "primary", names=NAMES, constraints=[acc_cap]) == 2
    with pytest.raises(SpecError, match="unknown objective"):
        pick(Y_PICK, "knee", names=NAMES, constraints=[("mmlu", "min", 0.1)])


def test_no_feasible_pick_is_a_typed_error_naming_the_nearest_trials():
    """Distance: each shortfall over its objective's range (acc 0.3, sparsity 8); row 1 misses
    only acc (0.44 / 0.3), rows 0 and 4 miss acc by less but sparsity too. Natural scale shown."""
    cons = [("acc", "min", 0.99), ("sparsity", "min", -5.0)]  # acc >= 0.99, g <= 5
    with pytest.raises(NoFeasibleTrialError) as info:
        pick(Y_PICK, "knee", names=NAMES, constraints=cons, labels=[10, 11, 12, 13, 14, 15],
             signs=[1, 1, -1])
    err = info.value
    assert err.exit_code == 3 and err.field == "pick.constraints"
    assert [n for n, _, _ in err.nearest] == [11, 10, 14]
    assert err.nearest[0][2] == ["acc >= 0.99"]
    assert err.nearest[0][1]["sparsity"] == 5.0
    line = str(err)
    assert "\n" not in line
    assert line.startswith("pick.constraints: none of the 5 complete trials meets acc >= 0.99, "
                           "sparsity <= 5; nearest: trial 11 (acc=0.55, sparsity=5: misses "
                           "acc >= 0.99); trial 10 (acc=0.6, sparsity=9: misses acc >= 0.99 and "
                           "sparsity <= 5); trial 14 ")
    assert line.endswith("; fix: relax pick.constraints and run the spec again (`mmmo run`): "
                         "the study and its trials are kept, nothing is evaluated again")


def test_pick_never_chooses_failed_rows_and_validates_input():
    Y = np.array([[NAN, 9.0], [0.1, 0.1]])
    for policy in ("primary", "knee", "weighted"):
        assert pick(Y, policy, names=["a", "b"], primary="b") == 1
    with pytest.raises(NoCompleteTrialError, match="no trial completed"):
        pick(np.full((2, 2), NAN), "primary", names=["a", "b"])
    with pytest.raises(SpecError, match="pick.policy: is not a pick policy"):
        pick(Y, "best", names=["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names"):
        pick(Y, "primary", names=["a"])
    with pytest.raises(ValueError, match="primary"):
        pick(Y, "primary", names=["a", "b"], primary="c")
