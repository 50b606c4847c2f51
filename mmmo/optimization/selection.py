r"""Final-pick policies: which evaluated recipe to hand back at the end of a search.

``pick(Y, policy, names=..., ...)`` returns the row index of the chosen trial. ``Y`` holds the
maximised objective values (a minimised quantity such as the sparsity ``g`` is stored as ``-g``);
failed rows (any non-finite entry) are never chosen.

Policies:

- ``primary`` (the paper's): the best value of the ``primary`` objective (default: the first).
- ``knee``: the Pareto-optimal row nearest (Euclidean) to the ideal point after min-max
  normalising each objective over the front (a compromise point).
- ``weighted``: the largest weighted sum of min-max normalised objectives (normalised over the
  feasible rows, so that objectives on different scales are comparable), or with
  ``normalize=False`` of the objectives' own (maximised) values. Weights are non-negative, given
  by objective name (missing names weigh 0) or as a sequence; default equal.

Under every policy, exact ties go to a row no other row dominates, then to the lowest index
(:func:`order` ranks every feasible row this way; the pick is its first).

Constraints restrict the candidates before the policy applies. Each is a :class:`Constraint` or a
tuple ``(objective, kind, bound)`` on the maximised value: ``kind="min"`` means
``value >= bound``, ``kind="max"`` means ``value <= bound``. For example "sparsity g <= 5e6",
with ``-g`` stored, is ``("sparsity", "min", -5e6)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from mmmo.optimization.pareto import pareto_mask

PickPolicy = Literal["primary", "knee", "weighted"]
PICK_POLICIES: tuple[str, ...] = ("primary", "knee", "weighted")


class Constraint(BaseModel):
    r"""A bound on one maximised objective value: ``min`` is ``>= bound``, ``max`` is ``<= bound``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: str
    kind: Literal["min", "max"]
    bound: float

    def satisfied(self, values: np.ndarray) -> np.ndarray:
        r"""A boolean array: which of ``values`` (a ``n``-dim array) satisfy the bound."""
        return values >= self.bound if self.kind == "min" else values <= self.bound

    def __str__(self) -> str:
        return f"{self.objective} {'>=' if self.kind == 'min' else '<='} {self.bound:g}"


ConstraintLike = Constraint | tuple[str, str, float] | Mapping[str, object]


def as_constraint(c: ConstraintLike) -> Constraint:
    r"""A :class:`Constraint` from itself, a ``(objective, kind, bound)`` tuple or a mapping."""
    if isinstance(c, Constraint):
        return c
    if isinstance(c, Mapping):
        return Constraint.model_validate(dict(c))
    objective, kind, bound = c
    return Constraint(objective=objective, kind=kind, bound=bound)


def feasible_mask(
    Y: np.ndarray, *, names: Sequence[str], constraints: Sequence[ConstraintLike] | None = None
) -> np.ndarray:
    r"""Successful rows that satisfy every constraint.

    Args:
        Y: A ``n x m`` array, maximised.
        names: The ``m`` objective names.
        constraints: Constraints on named objectives.

    Returns:
        A ``n``-dim boolean array.
    """
    Y = np.asarray(Y, dtype=float)
    index = _name_index(names, Y.shape[1])
    ok = np.isfinite(Y).all(axis=1)
    for c in constraints or ():
        c = as_constraint(c)
        if c.objective not in index:
            raise ValueError(f"Constraint on unknown objective {c.objective!r}; known: {names}.")
        with np.errstate(invalid="ignore"):
            ok &= c.satisfied(Y[:, index[c.objective]])
    return ok


def order(
    Y: np.ndarray,
    policy: PickPolicy,
    *,
    names: Sequence[str],
    primary: str | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    constraints: Sequence[ConstraintLike] | None = None,
    normalize: bool = True,
    front_only: bool = False,
) -> np.ndarray:
    r"""Indices of the rows meeting ``constraints``, best first under ``policy``.

    ``pick`` is the first of them. With ``front_only`` only the Pareto-optimal feasible rows
    are ranked (the candidates of the front). Ties keep the lower index first.

    Args:
        normalize: ``weighted`` only: min-max normalise the objectives over the feasible rows
            before weighting (True), or weight their own values (False).

    Raises:
        ValueError: as :func:`pick`.
    """
    Y = np.asarray(Y, dtype=float)
    rows = _feasible_rows(Y, policy, names=names, constraints=constraints)
    F = Y[rows]
    front = pareto_mask(F)
    index = _name_index(names, Y.shape[1])
    if policy == "primary":
        name = names[0] if primary is None else primary
        if name not in index:
            raise ValueError(f"Unknown primary objective {name!r}; known: {list(names)}.")
        key = -F[:, index[name]]
    elif policy == "weighted":
        w = _weights(weights, names)
        key = -((_normalise(F, F) if normalize else F) @ w)
    else:  # knee: distance to the ideal point, the front normalised to [0, 1]
        key = np.linalg.norm(1.0 - _normalise(F, F[front]), axis=1)
    if policy == "knee":  # the front first
        ranked = sorted(range(len(rows)), key=lambda i: (not front[i], key[i], rows[i]))
    else:
        ranked = sorted(range(len(rows)), key=lambda i: (key[i], not front[i], rows[i]))
    return np.asarray([int(rows[i]) for i in ranked if front[i] or not front_only], dtype=int)


def _feasible_rows(Y: np.ndarray, policy: str, *, names: Sequence[str],
                   constraints: Sequence[ConstraintLike] | None) -> np.ndarray:
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-d array (n, m), got shape {Y.shape}.")
    _name_index(names, Y.shape[1])
    if policy not in PICK_POLICIES:
        raise ValueError(f"Unknown pick policy {policy!r}; known: {', '.join(PICK_POLICIES)}.")
    if not np.isfinite(Y).all(axis=1).any():
        raise ValueError("No successful trial to pick from.")
    rows = np.flatnonzero(feasible_mask(Y, names=names, constraints=constraints))
    if len(rows) == 0:
        listed = ", ".join(str(as_constraint(c)) for c in constraints or ())
        raise ValueError(f"No successful trial satisfies the constraints: {listed}.")
    return rows


def pick(
    Y: np.ndarray,
    policy: PickPolicy,
    *,
    names: Sequence[str],
    primary: str | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    constraints: Sequence[ConstraintLike] | None = None,
    normalize: bool = True,
) -> int:
    r"""Index of the chosen row of ``Y`` under ``policy`` among rows meeting ``constraints``.

    Args:
        Y: A ``n x m`` array of maximised objective values (NaN rows = failed trials).
        policy: ``"primary"``, ``"knee"`` or ``"weighted"`` (see the module docstring).
        names: The ``m`` objective names.
        primary: Name of the primary objective for ``"primary"`` (default ``names[0]``).
        weights: Weights for ``"weighted"``: by name, or a sequence of ``m`` values.
        constraints: Bounds on objectives, each a :class:`Constraint` or
            ``(objective, "min" | "max", bound)``.

    Returns:
        The index of the chosen row.

    Raises:
        ValueError: For an unknown policy or name, invalid weights, no successful row, or no
            row satisfying the constraints.
    """
    return int(order(Y, policy, names=names, primary=primary, weights=weights,
                     constraints=constraints, normalize=normalize)[0])


def _name_index(names: Sequence[str], m: int) -> dict[str, int]:
    names = list(names)
    if len(names) != m or len(set(names)) != m:
        raise ValueError(f"names must be {m} distinct objective names, got {names}.")
    return {name: i for i, name in enumerate(names)}


def _normalise(A: np.ndarray, reference: np.ndarray) -> np.ndarray:
    r"""Min-max normalise the columns of ``A`` by ``reference``'s (constant columns give 1)."""
    lo, hi = reference.min(axis=0), reference.max(axis=0)
    span = hi - lo
    return np.where(span > 0, (A - lo) / np.where(span > 0, span, 1.0), 1.0)


def _weights(weights: Mapping[str, float] | Sequence[float] | None, names: Sequence[str]):
    m = len(names)
    if weights is None:
        w = np.ones(m)
    elif isinstance(weights, Mapping):
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"Weights for unknown objectives {sorted(unknown)}; known: {names}.")
        w = np.array([float(weights.get(name, 0.0)) for name in names])
    else:
        w = np.asarray(weights, dtype=float).reshape(-1)
        if w.shape[0] != m:
            raise ValueError(f"Expected {m} weights, got {w.shape[0]}.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"Weights must be finite, non-negative and not all zero, got {w}.")
    return w
