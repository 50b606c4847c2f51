"""The ``async`` schedule on two slots (threads of this process): asking ahead, and a kill.

- With ``optimizer.ask_ahead`` the next recipe is proposed while both slots are busy (its
  proposal is written before the first trial is recorded); without it, only once a slot
  freed. Either way every trial of the budget is proposed once and recorded once.
- Killed right after a recipe asked ahead was written (both slots busy, nothing recorded),
  the search resumes: it evaluates the three unfinished proposals as proposed, proposes
  nothing twice, and spends exactly the budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import small_spec

BUDGET = 6


def _spec(folder: Path, name: str, *, ask_ahead: bool) -> Any:
    from mmmo.spec import load_spec

    folder.mkdir(parents=True, exist_ok=True)
    return load_spec(small_spec(
        folder, storage=str(folder / "studies"), name=name, limit=8,
        optimizer={"strategy": "random", "n_init": 2, "batch_size": 2, "iterations": 2,
                   "seed": 0, "schedule": "async", "ask_ahead": ask_ahead},
        compute={"device": "cpu", "batch_size": 64, "max_concurrent_trials": 2},
        heldout=[]))


def _points(log: Path) -> list[str]:
    return [line.split(" ", 2)[2] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("ask_ahead", [True, False])
def test_a_recipe_is_asked_ahead_while_both_slots_are_busy(
        ask_ahead: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmmo.engine import run
    from mmmo.study import StudyStore

    spec = _spec(tmp_path, "ahead", ask_ahead=ask_ahead)
    log = tmp_path / "points.log"
    monkeypatch.setenv("MMMO_CRASH_LOG", str(log))
    assert run(spec, finish=False)["complete"]
    points = _points(log)
    third = points.index("write:proposals/0002.json:done")
    first_record = min(i for i, p in enumerate(points)
                       if p.startswith("write:trials/") and p.endswith(":done"))
    # ahead: asked while trials 0 and 1 ran; else: asked for the slot the first record freed
    assert (third < first_record) is ask_ahead, points

    store = StudyStore(spec.storage, spec.study_name)
    proposed = [t.number for p in store.proposals() for t in p.trials]
    assert sorted(proposed) == list(range(BUDGET))  # each proposed once, the budget exact
    trials = store.trials()
    assert sorted(t.number for t in trials) == list(range(BUDGET))
    assert {t.slot for t in trials} == {0, 1} and all(t.status == "complete" for t in trials)


KILLED = """
import sys
from mmmo.engine import run
from mmmo.spec import load_spec
run(load_spec(sys.argv[1]), finish=False)
"""


def test_killed_after_asking_ahead_the_search_resumes_with_the_exact_budget(
        tmp_path: Path) -> None:
    from mmmo.engine import run
    from mmmo.study import StudyStore

    spec = _spec(tmp_path, "killed", ask_ahead=True)
    path = tmp_path / "killed.yaml"
    done = subprocess.run([sys.executable, "-c", KILLED, str(path)], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "MMMO_CRASH_AT": "write:proposals/0002.json:done",
                               "TQDM_DISABLE": "1"})
    assert done.returncode == -9, done.stderr[-2000:]
    store = StudyStore(spec.storage, spec.study_name)
    before = {t.number: t.recipe_id for p in store.proposals() for t in p.trials}
    assert sorted(before) == [0, 1, 2] and store.trials() == []  # two in flight, one ahead

    assert run(spec, finish=False)["complete"]
    proposals = store.proposals()
    proposed = [t.number for p in proposals for t in p.trials]
    assert sorted(proposed) == list(range(BUDGET))  # nothing proposed again
    trials = {t.number: t for t in store.trials()}
    assert sorted(trials) == list(range(BUDGET))
    assert all(trials[n].recipe_id == rid for n, rid in before.items())  # as proposed
    assert all(t.status == "complete" for t in trials.values())
