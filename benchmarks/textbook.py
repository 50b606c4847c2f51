r"""BoTorch's multi-objective tutorial loops, written out as a new user would copy them.

From BoTorch's tutorial "Parallel, Multi-Objective BO in BoTorch with qEHVI, qNEHVI, and
qNParEGO" (multi_objective_bo): one ``SingleTaskGP`` per objective with ``Standardize(m=1)`` in a
``ModelListGP``, fitted with ``fit_gpytorch_mll`` on the ``SumMarginalLogLikelihood``; the
problem's own reference point; ``optimize_acqf`` with ``q = batch``, ``num_restarts=10``,
``raw_samples=512``, ``options={"batch_limit": 5, "maxiter": 200}``, ``sequential=True``, and
a 128-sample ``SobolQMCNormalSampler``.

- ``qlognehvi``: ``qLogNoisyExpectedHypervolumeImprovement`` with ``X_baseline`` the evaluated
  points and ``prune_baseline=True`` (the tutorial's recommended acquisition);
- ``qlogehvi``: ``qLogExpectedHypervolumeImprovement`` over a ``FastNondominatedPartitioning``
  of the posterior mean at the evaluated points.

The tutorial observes noisy outcomes with a known noise level; the benchmarks here are noiseless
and the noise is inferred (no ``train_Yvar``), as a user without a noise estimate would run it.
Inputs are the unit cube (the tutorial normalises the problem's bounds to it); the initial design
is mm-mo's (scrambled Sobol, the same points as every other row of a benchmark).
"""

from __future__ import annotations

import numpy as np
import torch

KINDS = ("qlognehvi", "qlogehvi")
NUM_RESTARTS, RAW_SAMPLES, MC_SAMPLES, MAXITER = 10, 512, 128, 200


def _model(X: torch.Tensor, Y: torch.Tensor):
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import ModelListGP, SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls.sum_marginal_log_likelihood import SumMarginalLogLikelihood

    models = [
        SingleTaskGP(X, Y[..., i : i + 1], outcome_transform=Standardize(m=1))
        for i in range(Y.shape[-1])
    ]
    model = ModelListGP(*models)
    fit_gpytorch_mll(SumMarginalLogLikelihood(model.likelihood, model))
    return model


def candidates(kind: str, X: np.ndarray, Y: np.ndarray, ref_point: np.ndarray, q: int):
    r"""The tutorial's next batch of ``q`` points in ``[0, 1]^d`` given the evaluated data.

    Args:
        kind: ``"qlognehvi"`` or ``"qlogehvi"``.
        X: A ``n x d`` array of evaluated points (unit cube).
        Y: A ``n x m`` array of their outcomes (maximised).
        ref_point: The problem's reference point (``m`` values, maximised).
        q: Batch size.

    Returns:
        A ``q x d`` array.
    """
    from botorch.acquisition.multi_objective.logei import (
        qLogExpectedHypervolumeImprovement,
        qLogNoisyExpectedHypervolumeImprovement,
    )
    from botorch.optim.optimize import optimize_acqf
    from botorch.sampling.normal import SobolQMCNormalSampler
    from botorch.utils.multi_objective.box_decompositions.non_dominated import (
        FastNondominatedPartitioning,
    )

    train_x = torch.as_tensor(X, dtype=torch.double)
    train_obj = torch.as_tensor(Y, dtype=torch.double)
    ref = torch.as_tensor(ref_point, dtype=torch.double)
    model = _model(train_x, train_obj)
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]))
    if kind == "qlognehvi":
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=ref.tolist(),
            X_baseline=train_x,
            prune_baseline=True,
            sampler=sampler,
        )
    elif kind == "qlogehvi":
        with torch.no_grad():
            pred = model.posterior(train_x).mean
        acqf = qLogExpectedHypervolumeImprovement(
            model=model,
            ref_point=ref,
            partitioning=FastNondominatedPartitioning(ref_point=ref, Y=pred),
            sampler=sampler,
        )
    else:
        raise ValueError(f"unknown textbook loop {kind!r}; use one of {KINDS}")
    bounds = torch.stack([torch.zeros(X.shape[1]), torch.ones(X.shape[1])]).double()
    cand, _ = optimize_acqf(
        acq_function=acqf,
        bounds=bounds,
        q=q,
        num_restarts=NUM_RESTARTS,
        raw_samples=RAW_SAMPLES,
        options={"batch_limit": 5, "maxiter": MAXITER},
        sequential=True,
    )
    return cand.detach().numpy()
