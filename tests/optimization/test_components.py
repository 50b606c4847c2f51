"""The parts the strategies are made of: design, weak-to-strong, Fisher filter, GP noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

from mmmo.optimization import make_optimizer
from mmmo.optimization.design import point_keys, round_points, select_unique, sobol_points
from mmmo.optimization.fisher import fisher_order
from mmmo.optimization.models import fit_model, training_data
from mmmo.optimization.strategies import mmmo as mmmo_module
from mmmo.optimization.strategies.cmaes import _penalised
from mmmo.optimization.weak_to_strong import top_k_by_task_score, weak_to_strong


def test_select_unique_skips_and_repairs_duplicates():
    rng = np.random.default_rng(0)
    told = np.array([[0.5, 0.5]])
    candidates = np.array([[0.501, 0.499], [0.2, 0.2], [0.2004, 0.2], [0.9, 0.1]])
    out = select_unique(candidates, n=2, rounding=2, exclude=[told], rng=rng)
    np.testing.assert_array_equal(out, [[0.2, 0.2], [0.9, 0.1]])
    out = select_unique(candidates, n=4, rounding=2, exclude=[told], rng=rng)
    keys = point_keys(out, rounding=2)
    assert len(set(keys)) == 4 and (50, 50) not in keys
    with pytest.raises(RuntimeError, match="No new point"):
        select_unique(
            np.array([[0.0]]), n=1, rounding=0, exclude=[np.array([[0.0], [1.0]])], rng=rng
        )


def test_sobol_points_continue_the_sequence_and_rounding_clips():
    full = sobol_points(dim=3, n=8, seed=4)
    np.testing.assert_allclose(sobol_points(dim=3, n=4, seed=4, skip=4), full[4:])
    np.testing.assert_array_equal(
        round_points(np.array([[-0.1, 1.004, 0.123]]), rounding=2), [[0.0, 1.0, 0.12]]
    )


def test_weak_to_strong_crosses_over_with_a_mutant_of_the_top_recipes():
    rng = np.random.default_rng(0)
    parents = np.array([[0.9, 0.9, 0.9], [0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.5, 0.5, 0.5]])
    candidates = np.full((50, 3), 0.42)
    trials = weak_to_strong(candidates, parents, f=0.5, cr=0.0, rng=rng)
    assert (trials >= 0).all() and (trials <= 1).all()
    changed = (trials != candidates).sum(axis=1)
    assert (changed == 1).all()  # CR = 0: exactly the forced coordinate comes from the mutant
    full = weak_to_strong(candidates, parents, f=0.5, cr=1.0, rng=rng)
    assert ((full != candidates).sum(axis=1) == 3).all()
    with pytest.raises(ValueError, match="3 parents"):
        weak_to_strong(candidates, parents[:2], f=0.5, cr=0.5, rng=rng)


def test_top_k_ranks_by_the_sum_of_task_scores_only():
    X = np.arange(5)[:, None] * np.ones((5, 2)) / 10
    Y = np.array(
        [[0.1, 0.1, -1.0], [0.5, 0.4, -9.0], [np.nan, 1.0, 0.0], [0.3, 0.3, 0.0], [0.2, 0.0, 5.0]]
    )
    top = top_k_by_task_score(X, Y, k=3, task_objectives=[0, 1])
    np.testing.assert_allclose(top[:, 0], [0.1, 0.3, 0.0])  # sums 0.9, 0.6, then the first 0.2


def test_top_k_scales_tasks_so_a_large_one_does_not_decide_alone():
    X = np.arange(3)[:, None] * np.ones((3, 2)) / 10
    Y = np.array([[300.0, 0.0], [100.0, 0.9], [0.0, 1.0]])  # task 0 on a 100x larger scale
    raw = top_k_by_task_score(X, Y, k=1, task_objectives=[0, 1], scale="raw")
    scaled = top_k_by_task_score(X, Y, k=1, task_objectives=[0, 1])
    np.testing.assert_allclose(raw[:, 0], [0.0])  # 300 + 0 wins the raw sum
    np.testing.assert_allclose(scaled[:, 0], [0.1])  # 1/3 + 0.9 beats 1 + 0 and 0 + 1


def _fitted(n: int = 8, Yvar: np.ndarray | None = None):
    X = sobol_points(dim=2, n=n, seed=0)
    Y = np.stack([np.sin(3 * X[:, 0]), np.cos(2 * X[:, 1])], axis=1)
    Yvar = np.full_like(Y, np.nan) if Yvar is None else Yvar
    return X, fit_model(training_data(X, Y, Yvar, use_noise=True))


def test_fisher_order_puts_uncertain_candidates_first_and_sees_pending_points():
    X, model = _fitted()
    near, far, other = X[:1], np.array([[0.97, 0.03]]), np.array([[0.5, 0.999]])
    assert fisher_order(model, np.concatenate([near, far])).tolist() == [1, 0]
    # A candidate at a pending point is no longer uncertain: it goes last.
    assert fisher_order(model, np.concatenate([far, other]), pending=far).tolist() == [1, 0]


def test_training_data_uses_noise_only_when_known_everywhere():
    X = np.random.default_rng(0).random((4, 2))
    Y = np.ones((4, 2))
    Y[3] = np.nan
    known = np.full((4, 2), 1e-3)
    known[3] = np.nan  # the failed row does not count
    assert training_data(X, Y, known, use_noise=True).Yvar.shape == (3, 2)
    assert training_data(X, Y, known, use_noise=False).Yvar is None
    partial = known.copy()
    partial[0, 1] = np.nan
    assert training_data(X, Y, partial, use_noise=True).Yvar is None
    _, model = _fitted(Yvar=np.full((8, 2), 1e-3))
    assert isinstance(model.likelihood, FixedNoiseGaussianLikelihood)


def test_cmaes_ranks_failed_trials_worst():
    f = np.array([-0.5, np.nan, -0.2])
    np.testing.assert_allclose(_penalised(f, f), [-0.5, 0.8, -0.2])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"weak_to_strong": False, "fisher_filter": False}, [0, 1]),  # the first n
        ({"weak_to_strong": False, "fisher_filter": True}, [3, 2]),  # the filter's order
    ],
)
def test_mmmo_ablation_switches(monkeypatch, dtlz2, tiny, flags, expected):
    fixed = np.array(
        [[0.11, 0.12, 0.13], [0.21, 0.22, 0.23], [0.31, 0.32, 0.33], [0.41, 0.42, 0.43]]
    )
    monkeypatch.setattr(mmmo_module, "ehvi_candidates", lambda *a, **k: torch.as_tensor(fixed))
    monkeypatch.setattr(
        mmmo_module, "fisher_order", lambda model, X, pending: np.arange(len(X))[::-1]
    )
    opt = make_optimizer("mmmo", 3, 2, seed=0, **{**tiny["mmmo"], **flags})
    X0 = opt.ask(4)
    opt.tell(X0, dtlz2(X0))
    np.testing.assert_allclose(opt.ask(2), fixed[expected])


def test_mmmo_weak_to_strong_moves_the_candidates(monkeypatch, dtlz2, tiny):
    fixed = np.full((4, 3), 0.5)
    monkeypatch.setattr(mmmo_module, "ehvi_candidates", lambda *a, **k: torch.as_tensor(fixed))
    opt = make_optimizer("mmmo", 3, 2, seed=0, **{**tiny["mmmo"], "fisher_filter": False})
    X0 = opt.ask(4)
    opt.tell(X0, dtlz2(X0))
    X = opt.ask(2)
    assert ((X != 0.5).sum(axis=1) >= 1).all()


def test_box_decomposition_updated_per_believed_point_equals_a_fresh_one():
    from botorch.utils.multi_objective.box_decompositions.non_dominated import (
        FastNondominatedPartitioning,
    )

    g = torch.Generator().manual_seed(0)
    Y = torch.rand(12, 4, generator=g, dtype=torch.double)
    new = torch.rand(5, 4, generator=g, dtype=torch.double) + 0.2
    ref = torch.zeros(4, dtype=torch.double)
    part = FastNondominatedPartitioning(ref_point=ref, Y=Y)
    for y in new:
        part.update(y[None])
    fresh = FastNondominatedPartitioning(ref_point=ref, Y=torch.cat([Y, new]))
    assert torch.allclose(part.compute_hypervolume(), fresh.compute_hypervolume())


@pytest.mark.parametrize(("surrogate", "dim", "kind"), [("saas", 3, "saas"), ("auto", 3, "gp"),
                                                         ("auto", 20, "saas")])
def test_surrogate_setting_picks_the_model(surrogate, dim, kind, tiny, dtlz2):
    from botorch.models.map_saas import AdditiveMapSaasSingleTaskGP

    opt = make_optimizer("qehvi", dim, 2, seed=0, **{**tiny["qehvi"], "surrogate": surrogate})
    assert opt.surrogate_kind == kind
    X = opt.ask(4)
    opt.tell(X, dtlz2(X))
    model = opt._surrogate().model
    assert isinstance(model, AdditiveMapSaasSingleTaskGP) == (kind == "saas")
    if dim == 3:  # the whole ask runs with the SAAS model, pending points included
        P = opt.ask(2)
        assert opt.ask(2, pending=P).shape == (2, dim)


def test_mmmo_asks_twice_n_candidates_by_default(monkeypatch, dtlz2, tiny):
    asked = []

    def fake(*args, q, **kwargs):
        asked.append(q)
        return torch.full((q, 3), 0.5, dtype=torch.double)

    monkeypatch.setattr(mmmo_module, "ehvi_candidates", fake)
    settings = {**tiny["mmmo"], "n_candidates": None}
    opt = make_optimizer("mmmo", 3, 2, seed=0, **settings)
    X0 = opt.ask(4)
    opt.tell(X0, dtlz2(X0))
    opt.ask(1)
    opt.ask(3)
    opt = make_optimizer("mmmo", 3, 2, seed=0, **{**settings, "n_candidates": 4})
    opt.tell(X0, dtlz2(X0))
    opt.ask(1)
    opt.ask(5)
    assert asked == [2, 6, 4, 5]
