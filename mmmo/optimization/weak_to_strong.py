r"""MM-MO's weak-to-strong step: a differential-evolution move of the acquisition's candidates
towards the best evaluated recipes.

For each candidate (the DE *target*): pick three distinct recipes ``a, b, c`` among the top-k
evaluated ones (ranked by the sum of task scores, sparsity ignored; each score min-max scaled
over the successful trials by default, so that a task on a larger scale does not decide alone:
the paper sums raw accuracies, which are on one scale), build the mutant
``clip(a + F * (b - c), 0, 1)``, and cross it over binomially with the candidate (rate ``CR``,
at least one coordinate from the mutant). One generation, no selection: the trial vectors
replace the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


def top_k_by_task_score(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    k: int,
    task_objectives: Sequence[int],
    scale: Literal["minmax", "raw"] = "minmax",
) -> np.ndarray:
    r"""The ``k`` successful points with the largest sum of task objectives, best first.

    Args:
        X: A ``n x d`` array of told points.
        Y: A ``n x m`` array of told outcomes (maximised; non-finite rows are skipped).
        k: Number of points.
        task_objectives: Indices of the task objectives.
        scale: ``"minmax"`` sums each objective scaled to ``[0, 1]`` over the successful
            points; ``"raw"`` sums them as they are (the paper's code).

    Returns:
        A ``min(k, n_ok) x d`` array.
    """
    ok = np.flatnonzero(np.isfinite(Y).all(axis=1))
    tasks = Y[ok][:, list(task_objectives)]
    if scale == "minmax" and len(tasks):
        span = tasks.max(axis=0) - tasks.min(axis=0)
        tasks = (tasks - tasks.min(axis=0)) / np.where(span > 0, span, 1.0)
    score = tasks.sum(axis=1)
    order = ok[np.argsort(-score, kind="stable")]
    return X[order[:k]]


def weak_to_strong(
    candidates: np.ndarray,
    parents: np.ndarray,
    *,
    f: float,
    cr: float,
    rng: np.random.Generator,
) -> np.ndarray:
    r"""One DE/rand/1/bin generation with the candidates as targets and the parents as donors.

    Args:
        candidates: A ``q x d`` array (targets).
        parents: A ``k x d`` array of strong recipes, ``k >= 3``.
        f: Differential weight ``F``.
        cr: Crossover rate ``CR``.
        rng: Random generator.

    Returns:
        A ``q x d`` array of trial vectors in ``[0, 1]``.
    """
    candidates = np.asarray(candidates, dtype=float)
    parents = np.asarray(parents, dtype=float)
    if len(parents) < 3:
        raise ValueError(f"weak_to_strong needs at least 3 parents, got {len(parents)}.")
    q, d = candidates.shape
    trials = candidates.copy()
    for i in range(q):
        a, b, c = parents[rng.choice(len(parents), size=3, replace=False)]
        mutant = np.clip(a + f * (b - c), 0.0, 1.0)
        cross = rng.random(d) < cr
        cross[rng.integers(d)] = True
        trials[i] = np.where(cross, mutant, candidates[i])
    return trials
