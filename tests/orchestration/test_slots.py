"""A slot's recovery when its backend dies under several benchmarks at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mmmo.engine import slots
from mmmo.spec import load_spec

from .conftest import small_spec


class DeadEngine:
    """A backend whose engine was killed: unhealthy until restarted (the restart takes a
    while, as an engine start does)."""

    name = "stand-in"

    def __init__(self) -> None:
        self.restarts = 0
        self.up = False
        self.serving = None

    def healthy(self) -> bool:
        return self.up

    def restart(self) -> None:
        time.sleep(0.3)
        self.restarts += 1
        self.up = True


def test_benchmarks_failing_together_restart_a_dead_engine_once(tmp_path: Path) -> None:
    """Three benchmarks of one trial fail at the same moment on one dead engine; each asks
    its slot to recover. The engine is restarted once, not once per benchmark (a second
    restart would kill the fresh engine and the requests the first one's retry sent it)."""
    spec = load_spec(small_spec(tmp_path, storage=str(tmp_path / "store")))
    key = slots._backend_key(spec, 0, "cpu")
    dead = DeadEngine()
    slots._BACKENDS[key] = (dead, threading.RLock())
    try:
        slot = slots.Slot(spec, 0, "cpu")
        barrier = threading.Barrier(3)
        restarted: list[bool] = []

        def fail_and_recover() -> None:
            barrier.wait()
            restarted.append(slot.recover())

        threads = [threading.Thread(target=fail_and_recover) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert dead.restarts == 1
        assert sorted(restarted) == [False, False, True]
        assert slot.recover() is False  # healthy now: nothing to do
    finally:
        slots._BACKENDS.pop(key, None)
