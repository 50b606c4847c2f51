r"""``cmaes``: the Evolutionary Model Merge baseline, CMA-ES on the mean of the task objectives.

The ``cma`` package's ``CMAEvolutionStrategy`` (bounded to ``[0, 1]^d``) minimises the negated
mean of the task objectives. It starts after the initial design, from its best recipe
(``x0="best"``) or the centre, with step size ``sigma0``.

ask/tell with arbitrary batch sizes: the told points after the initial design are cut, in told
order, into generations of ``popsize``; each full generation is told to the ES (failed trials
rank worst). The next proposals are the not-yet-handed-out samples of the current generation
(skipping as many as were told in it or are pending), then extra samples of the same
distribution. The ES is rebuilt by replaying the told data at every ask, so its state is the
told data and the replay is exactly reproducible (``cma`` seeds numpy's global generator, which
the ask restores afterwards).
"""

from __future__ import annotations

import warnings
from typing import Literal

import cma
import numpy as np
from pydantic import Field

from mmmo.optimization.base import Optimizer, OptimizerSettings, derive_seed
from mmmo.optimization.registry import register_strategy

_SPARE = 4


class CMAESSettings(OptimizerSettings):
    r"""Settings of ``cmaes``."""

    sigma0: float = Field(default=0.2, gt=0.0, le=1.0)
    """Initial step size (the search space is ``[0, 1]^d``)."""
    popsize: int | None = Field(default=None, ge=4)
    """Population size per generation; ``None`` takes cma's default ``4 + floor(3 ln d)``."""
    x0: Literal["best", "center"] = "best"
    """Start from the best recipe of the initial design, or from the centre of the space."""


@register_strategy
class CMAES(Optimizer):
    r"""CMA-ES on the mean task score, generation by generation over the told points."""

    name = "cmaes"
    Settings = CMAESSettings

    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        settings: CMAESSettings = self.settings  # type: ignore[assignment]
        start = self._design_rows()
        fitness = self._fitness()
        x0 = np.full(self.dim, 0.5)
        if settings.x0 == "best":
            ok = np.flatnonzero(np.isfinite(fitness[:start]))
            x0 = np.clip(self._X[ok[np.argmin(fitness[ok])]], 1e-3, 1 - 1e-3)
        options = {
            "bounds": [0.0, 1.0],
            "seed": derive_seed(self.seed, 1) % (2**31 - 2) + 1,  # cma treats seed 0 as "time"
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
        }
        if settings.popsize is not None:
            options["popsize"] = settings.popsize
        X_post, f_post = self._X[start:], fitness[start:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            es = cma.CMAEvolutionStrategy(x0.tolist(), settings.sigma0, options)
            lam = es.popsize
            for g in range(len(X_post) // lam):
                es.ask()
                block = slice(g * lam, (g + 1) * lam)
                es.tell(list(X_post[block]), _penalised(f_post[block], fitness).tolist())
            skip = len(X_post) % lam + len(pending)
            samples = list(es.ask())
            if skip + n + _SPARE > lam:
                samples += list(es.ask(number=skip + n + _SPARE - lam))
        return np.clip(np.asarray(samples[skip : skip + n + _SPARE]), 0.0, 1.0)

    def _fitness(self) -> np.ndarray:
        r"""``-mean(task objectives)`` per told row (minimised), NaN for failed rows."""
        return -self._Y[:, self.task_objectives].mean(axis=1)


def _penalised(f: np.ndarray, f_all: np.ndarray) -> np.ndarray:
    r"""Failed trials get a value worse than every successful one (ranking is all CMA-ES uses)."""
    finite = f_all[np.isfinite(f_all)]
    worst = finite.max() + 1.0 if len(finite) else 0.0
    return np.where(np.isfinite(f), f, worst)
