r"""The registry of strategies and the one public way to make an optimizer."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel

from mmmo.optimization.base import Optimizer

_REGISTRY: dict[str, type[Optimizer]] = {}
STRATEGIES: Mapping[str, type[Optimizer]] = MappingProxyType(_REGISTRY)
"""Read-only mapping from strategy name to strategy class."""

_O = TypeVar("_O", bound=type[Optimizer])


def register_strategy(cls: _O) -> _O:
    r"""Class decorator adding a strategy to :data:`STRATEGIES` under ``cls.name``.

    Raises:
        ValueError: If the name is empty or already registered.
    """
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__name__} has no strategy name.")
    if name in _REGISTRY:
        raise ValueError(
            f"Strategy {name!r} is already registered (by {_REGISTRY[name].__qualname__})."
        )
    _REGISTRY[name] = cls
    return cls


def strategy_names() -> list[str]:
    r"""Names of the registered strategies, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> type[Optimizer]:
    r"""The strategy class registered as ``name``.

    Raises:
        ValueError: If no strategy has that name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown optimization strategy {name!r}; known: {', '.join(strategy_names())}."
        ) from None


def settings_model(name: str) -> type[BaseModel]:
    r"""The pydantic settings model of strategy ``name`` (``extra="forbid"``, frozen)."""
    return get_strategy(name).Settings


def make_optimizer(
    strategy: str, dim: int, n_objectives: int, seed: int = 0, **settings: Any
) -> Optimizer:
    r"""Make an optimizer on ``[0, 1]^dim`` that maximises ``n_objectives`` objectives.

    Args:
        strategy: A name from :func:`strategy_names`.
        dim: Dimension of the search space.
        n_objectives: Number of objectives.
        seed: Seed; the same seed and tells give the same asks.
        **settings: Fields of the strategy's settings model (see :func:`settings_model`).

    Returns:
        An optimizer with no told data.

    Raises:
        ValueError: For an unknown strategy or invalid arguments.
        pydantic.ValidationError: For unknown or invalid settings.
    """
    cls = get_strategy(strategy)
    return cls(dim, n_objectives, seed=seed, settings=cls.Settings(**settings))


def optimizer_from_state(state: Mapping[str, Any]) -> Optimizer:
    r"""Rebuild an optimizer (strategy, shape, seed, settings and told data) from a snapshot."""
    opt = make_optimizer(
        state["strategy"],
        state["dim"],
        state["n_objectives"],
        seed=state["seed"],
        **state["settings"],
    )
    opt.load_state_dict(dict(state))
    return opt
