r"""Multi-objective proposal strategies behind one ask/tell interface (no Prefect, no models).

Every optimizer works on vectors in ``[0, 1]^dim`` and maximises every objective::

    from mmmo.optimization import make_optimizer

    opt = make_optimizer("mmmo", dim=6, n_objectives=3, seed=0, n_init=10)
    X = opt.ask(5)                     # (5, 6) in [0, 1], rounded to 2 decimals
    opt.tell(X, Y)                     # Y: (5, 3), NaN row = failed trial
    X2 = opt.ask(5, pending=X_busy)    # accounts for points still being evaluated
    state = opt.state_dict()           # JSON; optimizer_from_state(state) resumes it

Strategies: ``mmmo`` (the paper's engine), ``qehvi``, ``qnehvi``, ``qnparego``, ``random``
(scrambled Sobol) and ``cmaes`` (Evolutionary Model Merge's CMA-ES baseline).
"""

from mmmo.optimization import strategies as _strategies  # noqa: F401  (registers them)
from mmmo.optimization.base import Optimizer, OptimizerSettings
from mmmo.optimization.pareto import hypervolume, hypervolume_curve, infer_ref_point, pareto_mask
from mmmo.optimization.registry import (
    STRATEGIES,
    get_strategy,
    make_optimizer,
    optimizer_from_state,
    register_strategy,
    settings_model,
    strategy_names,
)
from mmmo.optimization.selection import PICK_POLICIES, Constraint, feasible_mask, order, pick

__all__ = [
    "PICK_POLICIES",
    "STRATEGIES",
    "Constraint",
    "Optimizer",
    "OptimizerSettings",
    "feasible_mask",
    "get_strategy",
    "hypervolume",
    "hypervolume_curve",
    "infer_ref_point",
    "make_optimizer",
    "optimizer_from_state",
    "order",
    "pareto_mask",
    "pick",
    "register_strategy",
    "settings_model",
    "strategy_names",
]
