r"""The ask/tell interface every strategy implements, and the settings every strategy accepts.

An optimizer works on vectors in ``[0, 1]^dim`` and maximises every objective. It keeps the told
data (``X``, ``Y``, optional ``Yvar``) and nothing else: a proposal is a pure function of the
seed, the settings, the told data (in order) and the pending points. Hence

- the same seed and the same tells give the same asks, whatever other code did to the global
  random state (each ``ask`` seeds its own generators from ``(seed, n_told, n_pending, n)``
  and restores the global torch and numpy states afterwards);
- ``state_dict()`` is just the told data (plain JSON), and replaying the recorded trials of a
  study into a fresh optimizer resumes it exactly.

Threads: an ``ask`` runs torch on ``settings.threads`` intra-op threads (default 1) and numpy's
and scipy's BLAS on one thread (``threadpoolctl``), and restores both afterwards. The models are
small (tens of points): the L-BFGS-B of the GP fits and of the acquisition optimisation makes
thousands of tiny BLAS calls, whose OpenBLAS thread hand-offs made the fit of 4 GPs at 30 points
3x slower (4.0 CPU s with 2 BLAS threads, 1.3 s with one), and a second torch thread cost 2-4x
more CPU for no gain on 2 shared cores (``benchmarks/ask_speed.py``). Torch's thread count is
process-wide: trials evaluated in other threads of the process run on ``threads`` threads while
an ``ask`` runs (``threads=None`` leaves it alone).

The initial design (scrambled Sobol, ``n_init`` points) is served by the base class until enough
points are told; afterwards a strategy's :meth:`Optimizer._propose` returns candidates, best
first, and the base class rounds them to the recipe identity and drops duplicates of told,
pending and batch points (failed trials included, so they are never proposed again).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from mmmo.optimization.design import select_unique, sobol_points

STATE_FORMAT = 1
# Extra Sobol points drawn beyond what is asked, so that duplicates are replaced by the next ones.
_SOBOL_SPARE = 8


class OptimizerSettings(BaseModel):
    r"""Settings that every strategy accepts (a strategy's own model extends this one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_init: int = Field(default=10, ge=0)
    """Size of the initial design (scrambled Sobol) served before any model is used."""
    rounding: int | None = Field(default=2, ge=0, le=15)
    """Decimals that identify a recipe: proposals are rounded to them and de-duplicated against
    told, pending and batch points. ``None`` keeps full precision (exact duplicates only)."""
    task_objectives: tuple[int, ...] | None = None
    """Indices of the objectives that are task scores (``mmmo``'s weak-to-strong ranks recipes by
    their sum, ``cmaes`` maximises their mean); ``None`` means all objectives."""
    threads: int | None = Field(default=1, ge=1)
    """Torch intra-op threads during an ``ask`` (restored afterwards); ``None`` keeps torch's
    setting. One is fastest for the small models of a merge search on a shared CPU; more can
    pay off at hundreds of points on an idle many-core machine."""


@contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    r"""Run torch on ``threads`` intra-op threads (``None``: unchanged) and numpy's and scipy's
    BLAS on one thread; restore both afterwards."""
    before = torch.get_num_threads()
    with threadpool_limits(limits=1, user_api="blas"):
        if threads is not None and threads != before:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


@contextmanager
def seeded(seed: int) -> Iterator[np.random.Generator]:
    r"""Seed torch and numpy for one call, and restore their global states afterwards.

    Args:
        seed: A non-negative integer below ``2**32``.

    Yields:
        A numpy generator seeded with ``seed``.
    """
    from mmmo.rnglock import generator_lock

    np_state = np.random.get_state()
    with generator_lock("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield np.random.default_rng(seed)
        finally:
            np.random.set_state(np_state)


def derive_seed(*entropy: int) -> int:
    r"""A 32-bit seed derived deterministically from non-negative integers."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


class Optimizer(ABC):
    r"""Base class of all strategies: ask/tell on ``[0, 1]^dim``, every objective maximised.

    Subclasses set ``name`` and ``Settings`` (their pydantic settings model, declared once) and
    implement :meth:`_propose`. Instances are made by
    :func:`mmmo.optimization.make_optimizer`.

    Not thread-safe: ``ask`` seeds and restores the process-wide torch/numpy random states, so
    two ``ask`` calls must not run concurrently in one process.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[OptimizerSettings]] = OptimizerSettings
    min_objectives: ClassVar[int] = 1
    min_valid: ClassVar[int] = 2
    """Successful trials needed before the strategy's own proposals replace the Sobol design."""

    def __init__(
        self,
        dim: int,
        n_objectives: int,
        *,
        seed: int = 0,
        settings: OptimizerSettings | None = None,
    ) -> None:
        r"""Make an optimizer with no told data.

        Args:
            dim: Dimension ``d`` of the search space ``[0, 1]^d``.
            n_objectives: Number ``m`` of objectives (all maximised).
            seed: Non-negative seed; the same seed and tells give the same asks.
            settings: An instance of ``Settings``; defaults when ``None``.
        """
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        if int(n_objectives) != n_objectives or n_objectives < self.min_objectives:
            raise ValueError(
                f"Strategy {self.name!r} needs n_objectives >= {self.min_objectives}, "
                f"got {n_objectives!r}."
            )
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        settings = self.Settings() if settings is None else settings
        if type(settings) is not self.Settings:
            raise TypeError(
                f"Strategy {self.name!r} takes {self.Settings.__name__}, "
                f"got {type(settings).__name__}."
            )
        task = settings.task_objectives
        if task is not None and (
            not task or len(set(task)) != len(task) or min(task) < 0 or max(task) >= n_objectives
        ):
            raise ValueError(
                f"task_objectives must be distinct indices in [0, {n_objectives}), got {task}."
            )
        self._dim = int(dim)
        self._n_objectives = int(n_objectives)
        self._seed = int(seed)
        self._settings = settings
        self._X = np.empty((0, self._dim))
        self._Y = np.empty((0, self._n_objectives))
        self._Yvar = np.empty((0, self._n_objectives))

    # ----------------------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        r"""Dimension of the search space."""
        return self._dim

    @property
    def n_objectives(self) -> int:
        r"""Number of objectives."""
        return self._n_objectives

    @property
    def seed(self) -> int:
        r"""The seed the optimizer was made with."""
        return self._seed

    @property
    def settings(self) -> OptimizerSettings:
        r"""The validated (frozen) settings."""
        return self._settings

    @property
    def task_objectives(self) -> list[int]:
        r"""Indices of the task objectives (all objectives unless set)."""
        task = self._settings.task_objectives
        return list(range(self._n_objectives)) if task is None else list(task)

    @property
    def X(self) -> np.ndarray:
        r"""A ``n x d`` copy of the told points, in told order."""
        return self._X.copy()

    @property
    def Y(self) -> np.ndarray:
        r"""A ``n x m`` copy of the told outcomes (NaN where a trial failed)."""
        return self._Y.copy()

    @property
    def Yvar(self) -> np.ndarray:
        r"""A ``n x m`` copy of the told noise variances (NaN where not given)."""
        return self._Yvar.copy()

    @property
    def n_told(self) -> int:
        r"""Number of told points (failed ones included)."""
        return len(self._X)

    @property
    def valid(self) -> np.ndarray:
        r"""A ``n``-dim boolean mask of successful trials (every objective finite)."""
        return np.isfinite(self._Y).all(axis=1)

    # ------------------------------------------------------------------------------ ask / tell
    def ask(self, n: int, *, pending: np.ndarray | None = None) -> np.ndarray:
        r"""Propose ``n`` new points.

        Args:
            n: Number of points.
            pending: A ``p x d`` array of points proposed earlier and still being evaluated;
                proposals account for them and never repeat them.

        Returns:
            A ``n x d`` array in ``[0, 1]``, rounded to ``settings.rounding`` decimals, distinct
            from each other and from every told and pending point.
        """
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}.")
        n = int(n)
        pending = self._check_points(pending, what="pending")
        if n == 0:
            return np.empty((0, self._dim))
        rounding = self._settings.rounding
        seed = derive_seed(self._seed, self.n_told, len(pending), n)
        with limited_threads(self._settings.threads), seeded(seed) as rng:
            n_design = self._n_design(n, n_pending=len(pending))
            design = np.empty((0, self._dim))
            if n_design:
                skip = self.n_told + len(pending)
                design = select_unique(
                    sobol_points(
                        dim=self._dim, n=n_design + _SOBOL_SPARE, seed=self._seed, skip=skip
                    ),
                    n=n_design,
                    rounding=rounding,
                    exclude=(self._X, pending),
                    rng=rng,
                )
            if n_design == n:
                return design
            busy = np.concatenate([pending, design])
            candidates = self._propose(n - n_design, pending=busy, rng=rng)
            proposals = select_unique(
                candidates,
                n=n - n_design,
                rounding=rounding,
                exclude=(self._X, busy),
                rng=rng,
            )
        return np.concatenate([design, proposals])

    def tell(self, X: np.ndarray, Y: np.ndarray, Yvar: np.ndarray | None = None) -> None:
        r"""Record evaluated points.

        Args:
            X: A ``k x d`` array of evaluated points in ``[0, 1]``.
            Y: A ``k x m`` array of outcomes, every objective maximised. A row with any
                non-finite entry is a failed trial: it is kept (and never proposed again)
                but excluded from the models.
            Yvar: An optional ``k x m`` array of observation-noise variances (squared standard
                errors of the scores); NaN where unknown.
        """
        X = self._check_points(X, what="X")
        Y = np.asarray(Y, dtype=float)
        if len(X) == 0 and Y.size == 0:
            return
        if Y.shape != (len(X), self._n_objectives):
            raise ValueError(f"Y must have shape {(len(X), self._n_objectives)}, got {Y.shape}.")
        Y = np.where(np.isfinite(Y), Y, np.nan)
        if Yvar is None:
            Yvar = np.full_like(Y, np.nan)
        else:
            Yvar = np.asarray(Yvar, dtype=float)
            if Yvar.shape != Y.shape:
                raise ValueError(f"Yvar must have shape {Y.shape}, got {Yvar.shape}.")
            Yvar = np.where(np.isfinite(Yvar), Yvar, np.nan)
            if (Yvar < 0).any():
                raise ValueError("Yvar must be non-negative (variances, not standard errors).")
        self._X = np.concatenate([self._X, X])
        self._Y = np.concatenate([self._Y, Y])
        self._Yvar = np.concatenate([self._Yvar, Yvar])

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        r"""A JSON-serialisable snapshot (plain lists, floats, ints, str; NaN stored as None)."""
        return {
            "format": STATE_FORMAT,
            "strategy": self.name,
            "dim": self._dim,
            "n_objectives": self._n_objectives,
            "seed": self._seed,
            "settings": self._settings.model_dump(mode="json"),
            "X": self._X.tolist(),
            "Y": _nan_to_none(self._Y),
            "Yvar": _nan_to_none(self._Yvar),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r"""Restore a snapshot made by :meth:`state_dict` of an optimizer made the same way.

        Raises:
            ValueError: If the snapshot comes from a different strategy, shape, seed or settings
                (use :func:`mmmo.optimization.optimizer_from_state` to rebuild one from it).
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"Unknown optimizer state format {state.get('format')!r}.")
        expected = {
            "strategy": self.name,
            "dim": self._dim,
            "n_objectives": self._n_objectives,
            "seed": self._seed,
            "settings": self._settings.model_dump(mode="json"),
        }
        diff = [key for key, value in expected.items() if state.get(key) != value]
        if diff:
            raise ValueError(
                f"Optimizer state does not match this optimizer in {diff}: make the optimizer "
                "with the same arguments, or use optimizer_from_state(state)."
            )
        m = self._n_objectives
        self._X = np.asarray(state["X"], dtype=float).reshape(-1, self._dim)
        self._Y = _none_to_nan(state["Y"]).reshape(-1, m)
        self._Yvar = _none_to_nan(state["Yvar"]).reshape(-1, m)

    # ------------------------------------------------------------------------------- internals
    @abstractmethod
    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r"""The strategy's candidates, best first.

        Called inside a seeded context once at least ``min_valid`` trials succeeded and the
        initial design is served. The caller rounds, de-duplicates and keeps the first ``n``
        new ones, so returning more than ``n`` (spares) is welcome.

        Args:
            n: Number of points wanted.
            pending: A ``p x d`` array of points being evaluated (including the initial-design
                points of the current ask).
            rng: The generator of this ask.

        Returns:
            A ``c x d`` array in ``[0, 1]``.
        """

    def _design_rows(self) -> int:
        r"""Told rows that make up the initial design: the shortest prefix with at least
        ``n_init`` rows and ``min_valid`` successful ones (all rows while there is none)."""
        enough = np.cumsum(self.valid) >= self.min_valid
        rows = np.arange(1, self.n_told + 1)
        ready = np.flatnonzero(enough & (rows >= self._settings.n_init))
        return int(rows[ready[0]]) if len(ready) else self.n_told

    def _n_design(self, n: int, *, n_pending: int) -> int:
        r"""How many of ``n`` asked points come from the initial design."""
        if int(self.valid.sum()) < self.min_valid:
            return n
        return min(n, max(0, self._settings.n_init - self.n_told - n_pending))

    def _check_points(self, X: np.ndarray | None, *, what: str) -> np.ndarray:
        if X is None:
            return np.empty((0, self._dim))
        X = np.asarray(X, dtype=float)
        if X.size == 0:
            return np.empty((0, self._dim))
        if X.ndim != 2 or X.shape[1] != self._dim:
            raise ValueError(f"{what} must have shape (k, {self._dim}), got {X.shape}.")
        if not np.isfinite(X).all() or X.min() < -1e-9 or X.max() > 1 + 1e-9:
            raise ValueError(f"{what} must be finite and lie in [0, 1].")
        return np.clip(X, 0.0, 1.0)


def _nan_to_none(A: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in A.tolist()]


def _none_to_nan(rows: list[list[float | None]]) -> np.ndarray:
    return np.asarray(
        [[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float
    )
