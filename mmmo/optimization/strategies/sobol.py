r"""``random``: a scrambled Sobol sequence, continued past the initial design (the baseline that
any model has to beat)."""

from __future__ import annotations

import numpy as np

from mmmo.optimization.base import Optimizer, OptimizerSettings
from mmmo.optimization.design import sobol_points
from mmmo.optimization.registry import register_strategy

_SPARE = 8


class RandomSettings(OptimizerSettings):
    r"""Settings of ``random`` (only the common ones)."""


@register_strategy
class RandomSearch(Optimizer):
    r"""Quasi-random search: the next points of the seeded scrambled Sobol sequence."""

    name = "random"
    Settings = RandomSettings
    min_valid = 0

    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        skip = self.n_told + len(pending)
        return sobol_points(dim=self.dim, n=n + _SPARE, seed=self.seed, skip=skip)
