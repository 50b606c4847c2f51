r"""``qnehvi``: batch q(Log)NEHVI, which integrates over the uncertainty of the observed front
(the better choice when the scores are noisy subsamples)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mmmo.optimization.acquisition import NEHVIKind, nehvi_candidates
from mmmo.optimization.bo import BayesianOptimizer, BOSettings, as_tensor
from mmmo.optimization.registry import register_strategy


class QNEHVISettings(BOSettings):
    r"""Settings of ``qnehvi``."""

    acquisition: NEHVIKind = "qlognehvi"
    """``"qlognehvi"`` (numerically robust) or ``"qnehvi"``."""
    mc_samples: int = Field(default=32, ge=1)
    """Quasi-MC samples (fewer than the other strategies: qNEHVI builds one box decomposition
    of the sampled front per sample, ~80 s CPU per ``ask(5)`` at 60 points with 128)."""


@register_strategy
class QNEHVI(BayesianOptimizer):
    r"""Batch q(Log)NEHVI with the told points as baseline (pruned to likely-optimal ones)."""

    name = "qnehvi"
    Settings = QNEHVISettings

    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        settings: QNEHVISettings = self.settings  # type: ignore[assignment]
        surrogate = self._surrogate()
        candidates = nehvi_candidates(
            surrogate.model,
            X_baseline=surrogate.data.X,
            ref_point=surrogate.ref_point,
            q=n,
            pending=as_tensor(pending),
            kind=settings.acquisition,
            opt=settings.acqf_optimization(),
        )
        return candidates.numpy()
