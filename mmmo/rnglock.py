"""One lock per torch default generator, for every mm-mo code path that seeds or draws from it.

mergekit's DARE/DELLA masks come from torch's default generator of the math device, seeded
per recipe (:mod:`mmmo.merging.rng`); the optimizer seeds the CPU generator for each ask
(:func:`mmmo.optimization.base.seeded`); a sampling evaluation seeds it as lm-eval does.
Threads of one process share those generators, so whoever seeds, draws and restores one holds
its lock meanwhile: a merge on one slot never sees its stream re-seeded by an ask of the driver
or by another slot.
"""

from __future__ import annotations

import threading

__all__ = ["generator_lock"]

_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


def generator_lock(key: str) -> threading.RLock:
    """The lock of the default generator ``key`` (``cpu``, ``cuda:0``, ``mps``)."""
    with _GUARD:
        return _LOCKS.setdefault(key, threading.RLock())
