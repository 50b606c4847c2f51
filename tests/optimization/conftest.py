"""Fixtures of the optimizer tests: tiny budgets so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "torch_extensions"),
)

_BO_TINY = {"n_init": 4, "num_restarts": 1, "raw_samples": 8, "mc_samples": 4, "maxiter": 5}
TINY: dict[str, dict] = {
    "mmmo": {**_BO_TINY, "n_candidates": 3},
    "qehvi": dict(_BO_TINY),
    "qnehvi": dict(_BO_TINY),
    "qnparego": dict(_BO_TINY),
    "random": {"n_init": 4},
    "cmaes": {"n_init": 4, "popsize": 4},
}


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """One torch thread: small models are faster that way, and it is fair to parallel jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> dict[str, dict]:
    """Cheap settings per strategy."""
    return {name: dict(settings) for name, settings in TINY.items()}


def _dtlz2(X: np.ndarray) -> np.ndarray:
    """DTLZ2 with 2 objectives on [0, 1]^d, negated (maximised)."""
    from botorch.test_functions.multi_objective import DTLZ2

    problem = DTLZ2(dim=X.shape[1], num_objectives=2, negate=True)
    return problem(torch.as_tensor(X, dtype=torch.double)).numpy()


@pytest.fixture
def dtlz2() -> Callable[[np.ndarray], np.ndarray]:
    """A 2-objective maximisation problem on [0, 1]^d; reference point (-1.1, -1.1)."""
    return _dtlz2
