r"""``qnparego``: q(Log)NParEGO, one random Chebyshev scalarisation per batch point."""

from __future__ import annotations

import numpy as np

from mmmo.optimization.acquisition import ParEGOKind, parego_candidates
from mmmo.optimization.bo import BayesianOptimizer, BOSettings, as_tensor
from mmmo.optimization.registry import register_strategy


class QNParEGOSettings(BOSettings):
    r"""Settings of ``qnparego``."""

    acquisition: ParEGOKind = "qlognparego"
    """``"qlognparego"`` (qLogNEI on the scalarisation) or ``"qnparego"`` (qNEI, the original)."""


@register_strategy
class QNParEGO(BayesianOptimizer):
    r"""Random-scalarisation batch BO: each candidate maximises q(Log)NEI of its own
    Chebyshev scalarisation, given the previous candidates as pending."""

    name = "qnparego"
    Settings = QNParEGOSettings

    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        settings: QNParEGOSettings = self.settings  # type: ignore[assignment]
        surrogate = self._surrogate()
        candidates = parego_candidates(
            surrogate.model,
            X_baseline=surrogate.data.X,
            q=n,
            pending=as_tensor(pending),
            kind=settings.acquisition,
            opt=settings.acqf_optimization(),
        )
        return candidates.numpy()
