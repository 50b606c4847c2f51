r"""Surrogate models: one Gaussian process per objective, fitted on the successful trials.

Two kinds, both BoTorch's batched multi-output ``SingleTaskGP`` (one set of hyperparameters per
objective, fitted by maximum a posteriori with ``fit_gpytorch_mll``):

- ``"gp"``: Matern-5/2 ARD with BoTorch's default (dimension-scaled) priors;
- ``"saas"``: BoTorch's ``AdditiveMapSaasSingleTaskGP``, the MAP version of SAASBO's sparse
  axis-aligned subspace prior (half-Cauchy shrinkage of the inverse lengthscales, a sum of
  kernels with different global shrinkages): suited to many dimensions of which a few matter,
  such as per-layer-group merge parameters. The fully Bayesian SAAS GP (NUTS) is not offered:
  at 60 points in 30 dimensions its fit takes 45-175 CPU seconds per objective here
  (``benchmarks/highdim.py``), beyond an ask budget of a minute for 5-6 objectives.

The GPs standardise their outcomes *inside* the model (BoTorch's ``Standardize`` outcome
transform), so posteriors, acquisition values and the reference point all live on the raw
outcome scale. The paper's code standardised the outcomes outside the model but took its
reference point from the raw outcomes; here both are on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.map_saas import AdditiveMapSaasSingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.sampling.normal import SobolQMCNormalSampler
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

# Smallest noise variance allowed for given Yvar, relative to each objective's sample variance
# (an exact objective such as sparsity has Yvar 0, which would make the GP ill-conditioned).
MIN_RELATIVE_NOISE = 1e-6

SurrogateKind = Literal["gp", "saas"]


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    r"""The successful trials as double tensors.

    Attributes:
        X: A ``n x d`` tensor of points.
        Y: A ``n x m`` tensor of outcomes (maximised).
        Yvar: A ``n x m`` tensor of observation-noise variances, or ``None`` when the noise is
            to be inferred.
    """

    X: Tensor
    Y: Tensor
    Yvar: Tensor | None


def training_data(
    X: np.ndarray, Y: np.ndarray, Yvar: np.ndarray, *, use_noise: bool
) -> TrainingData:
    r"""Select the successful rows; keep ``Yvar`` only if known for all of them and wanted.

    Args:
        X: A ``n x d`` array of told points.
        Y: A ``n x m`` array of told outcomes (non-finite rows are failed trials).
        Yvar: A ``n x m`` array of noise variances, NaN where unknown.
        use_noise: Whether known noise variances should be used (fixed-noise GP).

    Returns:
        The training data of the successful rows.
    """
    ok = np.isfinite(Y).all(axis=1)
    to_tensor = lambda A: torch.as_tensor(A[ok], dtype=torch.double)  # noqa: E731
    Yvar_ok = Yvar[ok]
    known = use_noise and len(Yvar_ok) > 0 and bool(np.isfinite(Yvar_ok).all())
    return TrainingData(X=to_tensor(X), Y=to_tensor(Y), Yvar=to_tensor(Yvar) if known else None)


def fit_model(data: TrainingData, *, kind: SurrogateKind = "gp") -> SingleTaskGP:
    r"""Fit one independent GP per objective.

    A batched multi-output ``SingleTaskGP``: each objective has its own hyperparameters, as
    with the paper's ``ModelListGP`` of single-output GPs, but fitted and evaluated in one
    batch. With ``data.Yvar`` the noise is fixed to it (FixedNoiseGP-style), otherwise inferred.

    Args:
        data: The training data.
        kind: ``"gp"`` (Matern-5/2 ARD, BoTorch's default priors) or ``"saas"`` (BoTorch's
            ``AdditiveMapSaasSingleTaskGP``; see the module docstring).

    Returns:
        The fitted model (in eval mode), producing ``m`` outputs on the raw outcome scale.
    """
    Yvar = data.Yvar
    if Yvar is not None:
        floor = MIN_RELATIVE_NOISE * data.Y.var(dim=0).clamp_min(1e-12)
        Yvar = torch.maximum(Yvar, floor.expand_as(Yvar))
    cls = AdditiveMapSaasSingleTaskGP if kind == "saas" else SingleTaskGP
    model = cls(
        train_X=data.X,
        train_Y=data.Y,
        train_Yvar=Yvar,
        outcome_transform=Standardize(m=data.Y.shape[-1]),
    )
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    model.eval()
    return model


def standardized_variance(model: SingleTaskGP, X: Tensor, *, pending: Tensor | None = None):
    r"""Posterior variance of the latent functions on the standardised outcome scale.

    Args:
        model: A fitted model with a ``Standardize`` outcome transform.
        X: A ``n x d`` tensor of points.
        pending: A ``p x d`` tensor of points being evaluated; the model is conditioned on them
            (a GP's variance does not depend on the values observed, only on where).

    Returns:
        A ``n x m`` tensor of variances.
    """
    with torch.no_grad():
        if pending is not None and len(pending):
            fantasy = model.fantasize(pending, sampler=SobolQMCNormalSampler(torch.Size([1])))
            variance = fantasy.posterior(X).variance[0]
        else:
            variance = model.posterior(X).variance
        stdvs = model.outcome_transform.stdvs.reshape(-1)
    return variance / stdvs.square()
