r"""The strategies, one module each; importing this package registers them all."""

from mmmo.optimization.strategies.cmaes import CMAES, CMAESSettings
from mmmo.optimization.strategies.mmmo import MMMO, MMMOSettings
from mmmo.optimization.strategies.qehvi import QEHVI, QEHVISettings
from mmmo.optimization.strategies.qnehvi import QNEHVI, QNEHVISettings
from mmmo.optimization.strategies.qnparego import QNParEGO, QNParEGOSettings
from mmmo.optimization.strategies.sobol import RandomSearch, RandomSettings

__all__ = [
    "CMAES",
    "CMAESSettings",
    "MMMO",
    "MMMOSettings",
    "QEHVI",
    "QEHVISettings",
    "QNEHVI",
    "QNEHVISettings",
    "QNParEGO",
    "QNParEGOSettings",
    "RandomSearch",
    "RandomSettings",
]
