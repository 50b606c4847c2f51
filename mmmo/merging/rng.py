"""Recipe-local seeding of torch's generators, restored afterwards.

mergekit's DARE/DELLA draw their masks from torch's *default* generator of the device the
math runs on (``torch.bernoulli`` without a generator), and ``mergekit-yaml --random-seed s``
seeds those generators once, before the first tensor. :func:`seeded` does the same for one
materialisation: it saves the state of the generators of the math devices, seeds them with
``s``, and restores the saved state on exit, so a recipe's masks never depend on what ran
before and code outside sees its RNG stream untouched. A per-generator lock
(:mod:`mmmo.rnglock`) serialises everything that seeds a generator (materialisations on one
device, the optimizer's asks, sampling evaluations).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from mmmo.rnglock import generator_lock

__all__ = ["seeded"]

def _key(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def _get_state(key: str) -> torch.Tensor:
    if key.startswith("cuda"):
        return torch.cuda.get_rng_state(key)
    if key == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def _set_state(key: str, state: torch.Tensor) -> None:
    if key.startswith("cuda"):
        torch.cuda.set_rng_state(state, key)
    elif key == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _seed(key: str, seed: int) -> None:
    if key.startswith("cuda"):
        with torch.cuda.device(key):
            torch.cuda.manual_seed(seed)
    elif key == "mps":
        torch.mps.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@contextmanager
def seeded(devices: Iterable[torch.device | str], seed: int) -> Iterator[None]:
    """Seed the default generators of ``devices`` (and the CPU's) with ``seed`` for the block.

    The CPU generator is always included: mergekit-yaml seeds it too, and CPU-side draws
    (if any) then follow the recipe's seed as well.
    """
    keys = sorted({_key(torch.device(d)) for d in devices} | {"cpu"})
    with ExitStack() as stack:
        for key in keys:
            stack.enter_context(generator_lock(key))
        saved = {key: _get_state(key) for key in keys}
        for key in keys:
            _seed(key, seed)
        try:
            yield
        finally:
            for key, state in saved.items():
                _set_state(key, state)
