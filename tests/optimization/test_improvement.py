"""Every strategy improves the hypervolume of its initial design on a small problem."""

from __future__ import annotations

import numpy as np
import pytest

from mmmo.optimization import hypervolume, make_optimizer, strategy_names

REF = np.array([-2.0, -2.0])  # below every outcome of this DTLZ2 (f <= 1.75)
# A little more acquisition effort than the interface tests.
BETTER = {"raw_samples": 32, "mc_samples": 16, "maxiter": 20}


@pytest.mark.parametrize("strategy", strategy_names())
def test_hypervolume_improves_over_the_initial_design(strategy, tiny, dtlz2):
    settings = {**tiny[strategy], "n_init": 6}
    if "maxiter" in settings:
        settings.update(BETTER)
    opt = make_optimizer(strategy, 3, 2, seed=0, **settings)
    X = opt.ask(6)
    opt.tell(X, dtlz2(X))
    initial = hypervolume(opt.Y, REF)
    for _ in range(3):
        X = opt.ask(3)
        opt.tell(X, dtlz2(X))
    assert hypervolume(opt.Y, REF) > initial
