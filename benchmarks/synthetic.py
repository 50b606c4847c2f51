r"""Synthetic multi-objective problems of layer-wise merge searches (d = 30), for the benchmarks.

Both are BoTorch ``MultiObjectiveTestProblem``\ s (minimised; ``negate=True`` maximises) on the
unit cube, with a reference point:

- ``EmbeddedDTLZ2``: BoTorch's ``DTLZ2(dim=8, num_objectives=5)`` on 8 of 30 coordinates (a
  fixed, seeded choice), the other 22 inert: the textbook high-dimensional benchmark shape
  (SAASBO's "Branin embedded in 30 dims"), with DTLZ2's exact maximum hypervolume.
- ``LayeredMerge``: a made-up stand-in for a per-layer-group merge of 5 sources (a weight and a
  density per source and layer group, 3 groups: 30 coordinates) scored on 4 tasks plus sparsity.
  Task ``k`` is source ``k``'s skill, which lives in layer group ``k mod 3``: its score peaks when
  that group's effective weight ``c = weight * sqrt(density)`` of source ``k`` is 0.6, drops with
  the other sources' weight in the same group (interference) and a little with source ``k``'s
  weight in other groups; source 4 is a distractor. Sparsity is the mean of ``weight * density``.
  Each objective depends mostly on 2 coordinates and weakly on 12 more. Its maximum hypervolume
  is not known (``max_hv`` is ``None``: normalise by the best run instead).
"""

from __future__ import annotations

import torch
from botorch.test_functions.base import MultiObjectiveTestProblem
from botorch.test_functions.multi_objective import DTLZ2
from torch import Tensor

DIM = 30


class EmbeddedDTLZ2(MultiObjectiveTestProblem):
    r"""``DTLZ2(8, 5)`` on 8 seeded coordinates of ``[0, 1]^30``; the others do nothing."""

    dim = DIM
    num_objectives = 5
    _bounds = [(0.0, 1.0)] * DIM

    def __init__(self, *, negate: bool = False, active_seed: int = 0) -> None:
        base = DTLZ2(dim=8, num_objectives=self.num_objectives)
        self._ref_point, self._max_hv = base._ref_point, base.max_hv
        self.continuous_inds = list(range(self.dim))
        super().__init__(negate=negate)
        self._base = base
        generator = torch.Generator().manual_seed(active_seed)
        self.active = torch.randperm(DIM, generator=generator)[:8].sort().values

    def _evaluate_true(self, X: Tensor) -> Tensor:
        return self._base.evaluate_true(X[..., self.active])


class LayeredMerge(MultiObjectiveTestProblem):
    r"""5 sources x 3 layer groups x (weight, density); 4 task errors and the sparsity."""

    dim = DIM
    num_objectives = 5
    _bounds = [(0.0, 1.0)] * DIM
    _ref_point = [0.7, 0.7, 0.7, 0.7, 1.0]  # task error of the base (score 0.3); all dense
    _max_hv = None
    n_sources, n_groups, n_tasks = 5, 3, 4

    def __init__(self, *, negate: bool = False) -> None:
        self.continuous_inds = list(range(self.dim))
        super().__init__(negate=negate)

    def _evaluate_true(self, X: Tensor) -> Tensor:
        W = X.reshape(*X.shape[:-1], self.n_sources, self.n_groups, 2)
        weight, density = W[..., 0], W[..., 1]
        c = weight * density.clamp_min(0).sqrt()  # (..., sources, groups)
        errors = []
        for k in range(self.n_tasks):
            g = k % self.n_groups
            own = c[..., k, g]
            interference = c[..., :, g].square().sum(-1) - own.square()
            leak = c[..., k, :].sum(-1) - own
            skill = torch.exp(-(((own - 0.6) / 0.3) ** 2))
            score = 0.3 + 0.6 * skill - 0.2 * interference - 0.05 * leak
            errors.append(1.0 - score)
        sparsity = (weight * density).mean(dim=(-1, -2))
        return torch.stack([*errors, sparsity], dim=-1)
