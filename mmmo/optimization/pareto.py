r"""Pareto front, reference point and hypervolume on numpy arrays (BoTorch underneath).

Every function takes outcomes ``Y`` as a ``n x m`` array with every objective maximised; rows
with any non-finite entry (failed trials) are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume, infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated


def _as_outcomes(Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-d array (n, m), got shape {Y.shape}.")
    return Y


def pareto_mask(Y: np.ndarray) -> np.ndarray:
    r"""Which rows are Pareto-optimal (non-dominated among the successful rows).

    Identical rows are all marked (no de-duplication); failed rows never are.

    Args:
        Y: A ``n x m`` array, maximised.

    Returns:
        A ``n``-dim boolean array.
    """
    Y = _as_outcomes(Y)
    ok = np.isfinite(Y).all(axis=1)
    mask = np.zeros(len(Y), dtype=bool)
    if ok.any():
        nd = is_non_dominated(torch.as_tensor(Y[ok], dtype=torch.double), deduplicate=False)
        mask[np.flatnonzero(ok)] = nd.numpy()
    return mask


def infer_ref_point(Y: np.ndarray, *, scale: float = 0.1) -> np.ndarray:
    r"""Reference point ``nadir - scale * range`` of the Pareto front (BoTorch's rule).

    Args:
        Y: A ``n x m`` array, maximised.
        scale: Fraction of the front's range by which the nadir is moved back.

    Returns:
        A ``m``-dim array.

    Raises:
        ValueError: If no row is successful.
    """
    Y = _as_outcomes(Y)
    front = Y[pareto_mask(Y)]
    if len(front) == 0:
        raise ValueError("Cannot infer a reference point: no successful trial.")
    ref = infer_reference_point(torch.as_tensor(front, dtype=torch.double), scale=scale)
    return ref.numpy()


def hypervolume(Y: np.ndarray, ref_point: np.ndarray) -> float:
    r"""Hypervolume dominated by the successful rows of ``Y`` and bounded by ``ref_point``.

    Args:
        Y: A ``n x m`` array, maximised.
        ref_point: A ``m``-dim array; only rows strictly better in every objective count.

    Returns:
        The hypervolume (0.0 when no row beats the reference point).
    """
    Y = _as_outcomes(Y)
    ref = np.asarray(ref_point, dtype=float).reshape(-1)
    if ref.shape[0] != Y.shape[1]:
        raise ValueError(f"ref_point has {ref.shape[0]} entries, Y has {Y.shape[1]} objectives.")
    front = Y[pareto_mask(Y)]
    front = front[(front > ref).all(axis=1)]
    if len(front) == 0:
        return 0.0
    hv = Hypervolume(ref_point=torch.as_tensor(ref, dtype=torch.double))
    return float(hv.compute(torch.as_tensor(front, dtype=torch.double)))


def hypervolume_curve(Y: np.ndarray, ref_point: np.ndarray) -> list[float]:
    r"""Hypervolume after each evaluation, in order (failed rows repeat the previous value).

    Args:
        Y: A ``n x m`` array, maximised, in evaluation order.
        ref_point: A ``m``-dim array.

    Returns:
        A list of ``n`` non-decreasing floats.
    """
    Y = _as_outcomes(Y)
    ref = np.asarray(ref_point, dtype=float).reshape(-1)
    curve: list[float] = []
    current = 0.0
    for i, row in enumerate(Y):
        # Only a successful row that beats the reference point can change the hypervolume.
        if np.isfinite(row).all() and (row > ref).all():
            current = hypervolume(Y[: i + 1], ref)
        curve.append(current)
    return curve
