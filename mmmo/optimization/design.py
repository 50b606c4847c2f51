r"""Space-filling designs, the recipe rounding, and de-duplication of proposals.

A proposal's identity is its vector rounded to ``rounding`` decimals (the recipe's cache key in
MM-MO). Every strategy hands its candidates, best first, to :func:`select_unique`, which keeps
the first ``n`` whose rounded vectors are new (not told, not pending, not already in the batch)
and repairs the rest by a local jitter, so that no recipe is proposed twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.quasirandom import SobolEngine

# Jitter used to repair a duplicate: first scale, growth per attempt, cap, number of attempts.
_JITTER_SCALE = 0.02
_JITTER_GROWTH = 1.5
_JITTER_MAX_SCALE = 0.5
_JITTER_TRIES = 30
# Uniform draws tried before declaring the (rounded) search space exhausted.
_UNIFORM_TRIES = 10_000


def sobol_points(*, dim: int, n: int, seed: int, skip: int = 0) -> np.ndarray:
    r"""Points ``skip, ..., skip + n - 1`` of a scrambled Sobol sequence in ``[0, 1]^dim``.

    Args:
        dim: Dimension of the search space.
        n: Number of points.
        seed: Seed of the scrambling; the same seed gives the same sequence.
        skip: Number of leading points of the sequence to skip.

    Returns:
        A ``n x dim`` array.
    """
    engine = SobolEngine(dimension=dim, scramble=True, seed=seed)
    if skip > 0:
        engine.fast_forward(skip)
    return engine.draw(n, dtype=torch.double).numpy()


def round_points(X: np.ndarray, *, rounding: int | None) -> np.ndarray:
    r"""Round to ``rounding`` decimals (the recipe identity) and clip to ``[0, 1]``.

    Args:
        X: A ``n x d`` array.
        rounding: Number of decimals, or ``None`` for no rounding.

    Returns:
        A ``n x d`` array.
    """
    X = np.asarray(X, dtype=float)
    if rounding is not None:
        X = np.round(X, rounding)
    return np.clip(X, 0.0, 1.0)


def point_keys(X: np.ndarray, *, rounding: int | None) -> list[tuple]:
    r"""Hashable identities of points: integer grid indices, or the exact floats without rounding.

    Args:
        X: A ``n x d`` array.
        rounding: Number of decimals, or ``None``.

    Returns:
        A list of ``n`` tuples.
    """
    X = np.asarray(X, dtype=float).reshape(len(X), -1)
    if rounding is None:
        return [tuple(float(v) for v in row) for row in np.clip(X, 0.0, 1.0)]
    grid = np.rint(np.clip(X, 0.0, 1.0) * 10.0**rounding).astype(np.int64)
    return [tuple(int(v) for v in row) for row in grid]


def select_unique(
    candidates: np.ndarray,
    *,
    n: int,
    rounding: int | None,
    exclude: Iterable[np.ndarray] = (),
    rng: np.random.Generator,
) -> np.ndarray:
    r"""Keep the first ``n`` candidates that are new after rounding; repair duplicates by jitter.

    Candidates are taken in order (best first). When fewer than ``n`` are new, each duplicate in
    turn is perturbed by Gaussian noise of growing scale (it stays near what the strategy wanted)
    until its rounded vector is new; uniform draws are the last resort.

    Args:
        candidates: A ``c x d`` array, best first (``c`` may be smaller or larger than ``n``).
        n: Number of points to return.
        rounding: Number of decimals that identify a point, or ``None``.
        exclude: Arrays (``k x d``) of points that must not be proposed again: told and
            pending points.
        rng: Random generator used for the repairs.

    Returns:
        A ``n x d`` array of rounded, distinct points, none of them in ``exclude``.

    Raises:
        RuntimeError: If the rounded search space has no new point left.
    """
    candidates = np.asarray(candidates, dtype=float)
    dim = candidates.shape[-1]
    seen: set[tuple] = set()
    for block in exclude:
        if len(block):
            seen.update(point_keys(block, rounding=rounding))
    chosen: list[np.ndarray] = []
    duplicates: list[np.ndarray] = []

    def _take(x: np.ndarray) -> bool:
        key = point_keys(x[None], rounding=rounding)[0]
        if key in seen:
            return False
        seen.add(key)
        chosen.append(x)
        return True

    rounded = round_points(candidates, rounding=rounding) if len(candidates) else candidates
    for x, x_raw in zip(rounded, candidates, strict=True):
        if len(chosen) == n:
            break
        if not _take(x):
            duplicates.append(x_raw)
    step = 0.0 if rounding is None else 10.0**-rounding
    for x in duplicates:
        if len(chosen) == n:
            break
        scale = max(_JITTER_SCALE, 2.0 * step)
        for _ in range(_JITTER_TRIES):
            x_new = round_points(x + rng.normal(0.0, scale, size=dim), rounding=rounding)
            if _take(x_new):
                break
            scale = min(scale * _JITTER_GROWTH, _JITTER_MAX_SCALE)
    tries = 0
    while len(chosen) < n:
        if tries >= _UNIFORM_TRIES:
            raise RuntimeError(
                f"No new point left to propose at rounding={rounding}: {len(seen)} points are "
                "already told or pending. Use more decimals (or rounding=None)."
            )
        _take(round_points(rng.random(dim), rounding=rounding))
        tries += 1
    return np.asarray(chosen, dtype=float).reshape(n, dim)
