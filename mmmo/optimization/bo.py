r"""What the Bayesian strategies share: their settings and the fitted model of the told data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mmmo.optimization.acquisition import AcqfOptimization
from mmmo.optimization.base import Optimizer, OptimizerSettings
from mmmo.optimization.models import SurrogateKind, TrainingData, fit_model, training_data
from mmmo.optimization.pareto import infer_ref_point

AUTO_SAAS_MIN_DIM = 20
"""``surrogate="auto"`` fits the SAAS model from this many dimensions on, the plain GP below."""


class BOSettings(OptimizerSettings):
    r"""Settings of the GP-based strategies (defaults keep ``ask(5)`` well under 30 s on 2 CPU
    cores at 60 told points with 3 objectives)."""

    mc_samples: int = Field(default=128, ge=1)
    """Quasi-MC samples of the posterior used by the acquisition (the paper: 128)."""
    num_restarts: int = Field(default=4, ge=1)
    """L-BFGS-B starts per candidate (the paper: 10)."""
    raw_samples: int = Field(default=128, ge=1)
    """Quasi-random points scored to choose the starts (the paper: 512)."""
    maxiter: int = Field(default=50, ge=1)
    """Maximum L-BFGS-B iterations per start."""
    use_noise: bool = True
    """Use told ``Yvar`` as fixed observation noise when known for every successful trial;
    otherwise (or when False) the noise level is inferred."""
    ref_point: Literal["front", "initial"] | tuple[float, ...] = "front"
    """Reference point of the hypervolume acquisitions, on the raw (maximised) outcome scale:
    ``"front"`` infers it at every ask from the observed Pareto front (BoTorch's
    ``infer_reference_point``: nadir - 0.1 * range); ``"initial"`` infers it once from the
    initial design's front and keeps it (the paper fixes it from the initial design); a tuple
    gives it explicitly (the least acceptable value of each objective)."""
    surrogate: Literal["gp", "saas", "auto"] = "gp"
    """The GPs (see ``models.py``): ``"gp"`` (Matern-5/2 ARD with BoTorch's default priors),
    ``"saas"`` (BoTorch's MAP SAAS GP, for many dimensions of which few matter, e.g.
    per-layer-group recipes), or ``"auto"`` (SAAS from ``AUTO_SAAS_MIN_DIM`` = 20 dimensions
    on, the plain GP below)."""

    def acqf_optimization(self) -> AcqfOptimization:
        r"""The acquisition optimisation part of these settings."""
        return AcqfOptimization(
            mc_samples=self.mc_samples,
            num_restarts=self.num_restarts,
            raw_samples=self.raw_samples,
            maxiter=self.maxiter,
        )


@dataclass(frozen=True, kw_only=True)
class Surrogate:
    r"""A fitted model with the data it was fitted on.

    Attributes:
        data: The successful trials.
        model: One GP per objective on the raw outcome scale.
        ref_point: A ``m``-dim tensor: BoTorch's ``infer_reference_point`` on the observed front,
            the same (raw) scale as the model and ``data.Y``.
    """

    data: TrainingData
    model: object
    ref_point: Tensor


class BayesianOptimizer(Optimizer):
    r"""Base of the GP-based strategies (needs at least two objectives)."""

    Settings = BOSettings
    min_objectives = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ref = self.settings.ref_point  # type: ignore[attr-defined]
        if isinstance(ref, tuple) and len(ref) != self.n_objectives:
            raise ValueError(f"ref_point needs {self.n_objectives} values, got {len(ref)}.")

    def _ref_point(self, Y: np.ndarray) -> np.ndarray:
        r"""The reference point (``m``-dim) given the successful outcomes ``Y``."""
        ref = self.settings.ref_point  # type: ignore[attr-defined]
        if isinstance(ref, tuple):
            return np.asarray(ref, dtype=float)
        if ref == "initial":
            return infer_ref_point(self._Y[: self._design_rows()])
        return infer_ref_point(Y)

    @property
    def surrogate_kind(self) -> SurrogateKind:
        r"""The kind of GP this optimizer fits (``surrogate`` with ``"auto"`` resolved)."""
        kind = self.settings.surrogate  # type: ignore[attr-defined]
        if kind == "auto":
            return "saas" if self.dim >= AUTO_SAAS_MIN_DIM else "gp"
        return kind

    def _surrogate(self) -> Surrogate:
        r"""Fit the model to the successful told trials and set the reference point."""
        settings: BOSettings = self.settings  # type: ignore[assignment]
        data = training_data(self._X, self._Y, self._Yvar, use_noise=settings.use_noise)
        ref_point = torch.as_tensor(self._ref_point(data.Y.numpy()), dtype=torch.double)
        model = fit_model(data, kind=self.surrogate_kind)
        return Surrogate(data=data, model=model, ref_point=ref_point)


def as_tensor(X: np.ndarray) -> Tensor:
    r"""A double tensor from an array."""
    return torch.as_tensor(np.asarray(X, dtype=float), dtype=torch.double)
