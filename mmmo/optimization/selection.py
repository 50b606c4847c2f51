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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from mmmo.errors import NoCompleteTrialError, NoFeasibleTrialError, SpecError
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
            raise SpecError("pick.constraints", "constrain an unknown objective",
                            value=c.objective, fix=f"use one of {list(names)}")
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
    labels: Sequence[Any] | None = None,
    signs: Sequence[float] | None = None,
) -> np.ndarray:
    r"""Indices of the rows meeting ``constraints``, best first under ``policy``.

    ``pick`` is the first of them. With ``front_only`` only the Pareto-optimal feasible rows
    are ranked (the candidates of the front). Ties keep the lower index first.

    Args:
        normalize: ``weighted`` only: min-max normalise the objectives over the feasible rows
            before weighting (True), or weight their own values (False).

    Raises:
        As :func:`pick`.
    """
    Y = np.asarray(Y, dtype=float)
    rows = _feasible_rows(Y, policy, names=names, constraints=constraints, labels=labels,
                          signs=signs)
    F = Y[rows]
    front = pareto_mask(F)
    index = _name_index(names, Y.shape[1])
    if policy == "primary":
        name = names[0] if primary is None else primary
        if name not in index:
            raise SpecError("pick.primary", "is not an objective", value=name,
                            fix=f"use one of {list(names)}")
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
                   constraints: Sequence[ConstraintLike] | None,
                   labels: Sequence[Any] | None, signs: Sequence[float] | None) -> np.ndarray:
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-d array (n, m), got shape {Y.shape}.")
    _name_index(names, Y.shape[1])
    if policy not in PICK_POLICIES:
        raise SpecError("pick.policy", "is not a pick policy", value=policy,
                        fix=f"use one of {', '.join(PICK_POLICIES)}")
    if not np.isfinite(Y).all(axis=1).any():
        raise NoCompleteTrialError("pick", "no trial completed: there is nothing to pick from",
                                   fix="see why they failed (`mmmo status STUDY`)")
    rows = np.flatnonzero(feasible_mask(Y, names=names, constraints=constraints))
    if len(rows) == 0:
        raise infeasible(Y, names=names, constraints=constraints or (), labels=labels,
                         signs=signs)
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
    labels: Sequence[Any] | None = None,
    signs: Sequence[float] | None = None,
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
        labels: What to call each row in errors (e.g. trial numbers; default the row index).
        signs: Per objective, +1 or -1 with natural value = sign * maximised value (a
            minimised objective is -1): errors then show natural values and bounds.

    Returns:
        The index of the chosen row.

    Raises:
        SpecError: an unknown policy, objective name, or invalid weights (a ValueError).
        NoCompleteTrialError: no successful row.
        NoFeasibleTrialError: no successful row satisfies the constraints; it names the
            nearest rows (least total violation, each relative to its objective's range).
    """
    return int(order(Y, policy, names=names, primary=primary, weights=weights,
                     constraints=constraints, normalize=normalize, labels=labels,
                     signs=signs)[0])


def infeasible(Y: np.ndarray, *, names: Sequence[str], constraints: Sequence[ConstraintLike],
               labels: Sequence[Any] | None = None, signs: Sequence[float] | None = None,
               nearest: int = 3) -> NoFeasibleTrialError:
    r"""The error for "no successful row meets ``constraints``", naming the nearest rows.

    A row's distance is the sum over constraints of its shortfall, each divided by that
    objective's range over the successful rows (1 when they all agree).
    """
    Y = np.asarray(Y, dtype=float)
    index = _name_index(names, Y.shape[1])
    cons = [as_constraint(c) for c in constraints]
    sign = np.ones(len(names)) if signs is None else np.asarray(signs, dtype=float)
    ok = np.flatnonzero(np.isfinite(Y).all(axis=1))
    F = Y[ok]
    span = F.max(axis=0) - F.min(axis=0) if len(F) else np.ones(len(names))
    span = np.where(span > 0, span, 1.0)
    distance = np.zeros(len(ok))
    missed: list[list[str]] = [[] for _ in ok]
    for c in cons:
        j = index[c.objective]
        short = (c.bound - F[:, j]) if c.kind == "min" else (F[:, j] - c.bound)
        short = np.maximum(short, 0.0)
        distance += short / span[j]
        for r in np.flatnonzero(short > 0):
            missed[r].append(_natural(c, sign[j]))
    order = np.argsort(distance, kind="stable")[:nearest]
    label = list(labels) if labels is not None else list(range(len(Y)))
    found = []
    for r in order:
        row = int(ok[r])
        values = {names[j]: float(sign[j] * Y[row, j]) for j in range(len(names))}
        found.append((label[row], values, missed[r]))
    listed = ", ".join(_natural(c, sign[index[c.objective]]) for c in cons)
    shown = "; ".join(
        f"trial {lab} ({', '.join(f'{k}={_fmt(values[k])}' for k in _constrained(cons))}: "
        f"misses {' and '.join(miss)})" for lab, values, miss in found)
    return NoFeasibleTrialError(
        "pick.constraints", f"none of the {len(ok)} complete trials meets {listed}; "
        f"nearest: {shown}", nearest=found, constraints=[listed],
        fix="relax pick.constraints and run the spec again (`mmmo run`): the study and its "
            "trials are kept, nothing is evaluated again")


def _constrained(cons: Sequence[Constraint]) -> list[str]:
    return list(dict.fromkeys(c.objective for c in cons))


def _natural(c: Constraint, sign: float) -> str:
    """A constraint on a maximised value written on the natural scale."""
    kind = c.kind if sign > 0 else {"min": "max", "max": "min"}[c.kind]
    return f"{c.objective} {'>=' if kind == 'min' else '<='} {_fmt(sign * c.bound)}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


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
            raise SpecError("pick.weights", f"weigh unknown objectives {sorted(unknown)}",
                            has_value=False, fix=f"use names among {list(names)}")
        w = np.array([float(weights.get(name, 0.0)) for name in names])
    else:
        w = np.asarray(weights, dtype=float).reshape(-1)
        if w.shape[0] != m:
            raise ValueError(f"Expected {m} weights, got {w.shape[0]}.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise SpecError("pick.weights", "must be finite, non-negative and not all zero",
                        value=w.tolist(), fix="give each objective a weight >= 0, at least "
                        "one of them > 0")
    return w
