"""The ask/tell contract, checked for every registered strategy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mmmo.optimization import (
    STRATEGIES,
    Optimizer,
    infer_ref_point,
    make_optimizer,
    optimizer_from_state,
    register_strategy,
    settings_model,
    strategy_names,
)

DIM = 3
NAMES = strategy_names()


def _keys(X: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(row) for row in np.rint(np.asarray(X) * 100).astype(int)}


def _started(strategy: str, tiny: dict, f, *, seed: int = 0) -> Optimizer:
    """An optimizer past its initial design (so the next ask uses the strategy itself)."""
    opt = make_optimizer(strategy, DIM, 2, seed=seed, **tiny[strategy])
    X = opt.ask(4)
    opt.tell(X, f(X))
    return opt


def test_registry_lists_all_strategies():
    assert sorted(["mmmo", "qehvi", "qnehvi", "qnparego", "random", "cmaes"]) == NAMES
    assert set(STRATEGIES) == set(NAMES)
    with pytest.raises(TypeError):
        STRATEGIES["other"] = Optimizer  # type: ignore[index]


@pytest.mark.parametrize("strategy", NAMES)
def test_shapes_bounds_rounding_and_distinctness(strategy, tiny, dtlz2):
    opt = make_optimizer(strategy, DIM, 2, seed=1, **tiny[strategy])
    X0 = opt.ask(4)
    opt.tell(X0, dtlz2(X0))
    X1 = opt.ask(3)
    for X, n in ((X0, 4), (X1, 3)):
        assert X.shape == (n, DIM)
        assert X.dtype == np.float64
        assert (X >= 0).all() and (X <= 1).all()
        np.testing.assert_allclose(X * 100, np.rint(X * 100), atol=1e-9)
    assert len(_keys(np.concatenate([X0, X1]))) == 7
    assert opt.ask(0).shape == (0, DIM)


@pytest.mark.parametrize("strategy", NAMES)
def test_same_seed_same_tells_same_asks_and_state_round_trip(strategy, tiny, dtlz2):
    a = _started(strategy, tiny, dtlz2, seed=7)
    b = _started(strategy, tiny, dtlz2, seed=7)
    np.random.seed(1)
    torch.manual_seed(1)
    Xa = a.ask(2)
    np.random.seed(2)
    torch.manual_seed(2)
    np.testing.assert_array_equal(b.ask(2), Xa)

    a.tell(Xa, dtlz2(Xa))
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))  # strict JSON
    fresh = make_optimizer(strategy, DIM, 2, seed=7, **tiny[strategy])
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.ask(2), a.ask(2))
    assert optimizer_from_state(state).state_dict() == state

    other = make_optimizer(strategy, DIM, 2, seed=8, **tiny[strategy])
    same = make_optimizer(strategy, DIM, 2, seed=7, **tiny[strategy])
    assert not np.array_equal(other.ask(4), same.ask(4))


@pytest.mark.parametrize("strategy", NAMES)
def test_global_random_state_is_left_alone(strategy, tiny, dtlz2):
    opt = _started(strategy, tiny, dtlz2)
    np.random.seed(123)
    torch.manual_seed(123)
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    opt.ask(2)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("strategy", NAMES)
def test_failed_trials_are_excluded_but_never_proposed_again(strategy, tiny, dtlz2):
    opt = make_optimizer(strategy, DIM, 2, seed=3, **tiny[strategy])
    X = opt.ask(6)
    Y = dtlz2(X)
    Y[0] = np.nan
    Y[1, 1] = np.nan  # one NaN entry fails the whole row
    Y[2, 0] = np.inf
    opt.tell(X, Y)
    assert opt.valid.tolist() == [False, False, False, True, True, True]
    told = _keys(X)
    for _ in range(2):
        Xn = opt.ask(3)
        assert not (_keys(Xn) & told)
        opt.tell(Xn, dtlz2(Xn))
        told |= _keys(Xn)


@pytest.mark.parametrize("strategy", NAMES)
def test_all_failed_keeps_exploring(strategy, tiny):
    opt = make_optimizer(strategy, DIM, 2, seed=0, **tiny[strategy])
    X = opt.ask(4)
    opt.tell(X, np.full((4, 2), np.nan))
    Xn = opt.ask(4)
    assert not (_keys(Xn) & _keys(X))


@pytest.mark.parametrize("strategy", NAMES)
def test_pending_points_are_respected(strategy, tiny, dtlz2):
    opt = _started(strategy, tiny, dtlz2)
    P = opt.ask(3)
    X = opt.ask(3, pending=P)
    assert X.shape == (3, DIM)
    assert not (_keys(X) & _keys(P))
    # During the initial design too: pending points move the Sobol sequence on.
    fresh = make_optimizer(strategy, DIM, 2, seed=0, **tiny[strategy])
    first = fresh.ask(2)
    second = fresh.ask(2, pending=first)
    assert not (_keys(first) & _keys(second))


def test_noise_variances_are_told_and_kept(tiny, dtlz2):
    opt = _started("qehvi", tiny, dtlz2)
    X = opt.ask(2)
    opt.tell(X, dtlz2(X), Yvar=np.full((2, 2), 1e-4))
    assert np.isnan(opt.Yvar[:4]).all() and (opt.Yvar[4:] == 1e-4).all()
    with pytest.raises(ValueError, match="non-negative"):
        opt.tell(X, dtlz2(X), Yvar=-np.ones((2, 2)))
    # Noise known for every trial: fixed-noise GPs, with pending points and the Fisher filter.
    noisy = make_optimizer("mmmo", DIM, 2, seed=0, **tiny["mmmo"])
    X = noisy.ask(4)
    noisy.tell(X, dtlz2(X), Yvar=np.full((4, 2), 1e-3))
    P = noisy.ask(2)
    assert not (_keys(noisy.ask(2, pending=P)) & _keys(P))


def test_errors_are_clear(tiny):
    with pytest.raises(ValueError, match="known: cmaes, mmmo"):
        make_optimizer("nope", 2, 2)
    with pytest.raises(ValidationError):
        make_optimizer("mmmo", 2, 2, not_a_setting=1)
    with pytest.raises(ValidationError):
        make_optimizer("mmmo", 2, 2, acquisition="ucb")
    with pytest.raises(ValidationError):
        settings_model("qehvi")(top_k=5)  # an mmmo setting, not a qehvi one
    with pytest.raises(ValueError, match="n_objectives"):
        make_optimizer("qehvi", 2, 1)
    with pytest.raises(ValueError, match="task_objectives"):
        make_optimizer("mmmo", 2, 2, task_objectives=[2])
    with pytest.raises(ValueError, match="ref_point needs 2"):
        make_optimizer("qnehvi", 2, 2, ref_point=[0.0])
    with pytest.raises(ValidationError):
        make_optimizer("qnehvi", 2, 2, ref_point="nadir")
    opt = make_optimizer("random", 2, 2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        opt.tell(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        opt.tell(np.full((1, 2), 1.5), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="Y must have shape"):
        opt.tell(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Y must have shape"):
        opt.tell(np.zeros((2, 2)), np.zeros((1, 4)))
    opt.tell(np.empty((0, 2)), np.empty((0, 2)))
    assert opt.n_told == 0
    with pytest.raises(ValueError, match="pending"):
        opt.ask(1, pending=np.zeros((1, 3)))
    other = make_optimizer("random", 2, 2, seed=1)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(opt.state_dict())


def test_settings_models_forbid_extras_and_declare_common_fields():
    for name in NAMES:
        model = settings_model(name)
        assert model.model_config["extra"] == "forbid"
        assert {"n_init", "rounding", "task_objectives"} <= set(model.model_fields)
    mmmo = settings_model("mmmo")()
    assert (mmmo.acquisition, mmmo.n_candidates, mmmo.top_k) == ("qlogehvi", None, 5)
    assert (mmmo.de_f, mmmo.de_cr, mmmo.mc_samples, mmmo.raw_samples) == (0.5, 0.5, 32, 64)
    assert mmmo.weak_to_strong and mmmo.fisher_filter and mmmo.use_noise


def test_registry_refuses_duplicates():
    class Duplicate(Optimizer):
        name = "mmmo"

        def _propose(self, n, *, pending, rng):
            return np.zeros((n, self.dim))

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Duplicate)


@pytest.mark.parametrize("ref_point", ["front", "initial", (-1.5, -1.5)])
def test_reference_point_choices(ref_point, tiny, dtlz2):
    opt = _started("qehvi", {"qehvi": {**tiny["qehvi"], "ref_point": ref_point}}, dtlz2)
    X = opt.ask(2)
    opt.tell(X, dtlz2(X))
    expected = {
        "front": infer_ref_point(opt.Y),  # the current front
        "initial": infer_ref_point(opt.Y[:4]),  # the initial design's front, kept
        (-1.5, -1.5): np.array([-1.5, -1.5]),
    }[ref_point]
    np.testing.assert_allclose(opt._ref_point(opt.Y), expected)


def test_rounding_none_keeps_full_precision(dtlz2):
    opt = make_optimizer("random", 2, 2, seed=0, rounding=None, n_init=3)
    X = opt.ask(3)
    assert not np.allclose(X * 100, np.rint(X * 100))


@pytest.mark.parametrize(("threads", "inside"), [(1, 1), (None, 2)])
def test_ask_runs_torch_on_the_threads_setting_and_restores_it(monkeypatch, threads, inside):
    from threadpoolctl import threadpool_info

    from mmmo.optimization.strategies.sobol import RandomSearch

    seen = []
    propose = RandomSearch._propose

    def spy(self, n, *, pending, rng):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        seen.append((torch.get_num_threads(), set(blas)))
        return propose(self, n, pending=pending, rng=rng)

    monkeypatch.setattr(RandomSearch, "_propose", spy)
    opt = make_optimizer("random", DIM, 2, seed=0, n_init=2, threads=threads)
    opt.tell(opt.ask(2), np.zeros((2, 2)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        opt.ask(1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [(inside, {1})]
