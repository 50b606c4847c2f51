r"""MM-MO's Fisher filter: keep the candidates the surrogate is least sure about.

``FI(x) = sum_k 1 / var_k(x)`` over the objectives' GP posterior variances; the candidates are
ranked by increasing FI (most uncertain first). Variances are taken on the standardised outcome
scale the paper's GPs worked on (on the raw scale an objective with small units, such as an
accuracy next to a parameter-count sparsity, would dominate the sum), and from the model
conditioned on the pending points, so that a candidate next to a point already being evaluated
is not mistaken for an uncertain one.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.models.model import Model
from torch import Tensor

from mmmo.optimization.models import standardized_variance


def fisher_information(model: Model, X: Tensor, *, pending: Tensor | None = None) -> Tensor:
    r"""``FI(x) = sum_k 1 / var_k(x)`` with standardised posterior variances.

    Args:
        model: A fitted model with a ``Standardize`` outcome transform.
        X: A ``n x d`` tensor of candidates.
        pending: A ``p x d`` tensor of points being evaluated, or ``None``.

    Returns:
        A ``n``-dim tensor.
    """
    variance = standardized_variance(model, X, pending=pending)
    return variance.clamp_min(1e-12).reciprocal().sum(dim=-1)


def fisher_order(model: Model, X: np.ndarray, *, pending: np.ndarray | None = None) -> np.ndarray:
    r"""Indices of ``X`` (a ``n x d`` array) by increasing Fisher information (stable)."""
    P = None
    if pending is not None and len(pending):
        P = torch.as_tensor(pending, dtype=torch.double)
    fi = fisher_information(model, torch.as_tensor(X, dtype=torch.double), pending=P).numpy()
    return np.argsort(fi, kind="stable")
