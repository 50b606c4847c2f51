"""Kill anywhere: a search SIGKILLed at >= 10 different points, resumed each time, loses nothing.

A driver process (one interpreter: imports, tasks and the resident models loaded once, torch on
one thread so that forking is safe) forks one run after another of the same study with
``run_inline``. Each run resumes the study and kills itself (``MMMO_CRASH_AT``,
:mod:`mmmo._crash`) at the next crash point of :data:`KILLS`, in search order: around study
writes (before the write, temp file staged, done), after a merge, after an evaluation, after
telling the optimizer. Then one run finishes it. From the crash log: no trial lost,
no trial record written twice, no finished trial evaluated again; a trial evaluated twice only
when the first evaluation was killed before its record was committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DRIVER = r'''
import json, os, sys, traceback
import torch
torch.set_num_threads(1)  # no OpenMP worker threads: forking is safe
from mmmo.runtime import Slot, run_inline, slot_devices
from mmmo.search import Search, check_inputs
from mmmo.spec import parse_spec

spec = parse_spec(json.loads(sys.argv[1]))
log = sys.argv[2]
check_inputs(spec)  # tasks loaded and pooled once, inherited by every run
slot = Slot(spec, slot_devices(spec)[0])
slot.materializer  # base and sources resident once, inherited by every run


def run(crash_at):
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["MMMO_CRASH_LOG"] = log
            if crash_at:
                os.environ["MMMO_CRASH_AT"] = str(crash_at)
            os._exit(0 if run_inline(Search.open(spec), slot=slot) else 3)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return pid, os.waitstatus_to_exitcode(status)


runs = [run(point) for point in json.loads(sys.argv[3])]
runs.append(run(None))
print(json.dumps(runs))
'''


#: Where the runs kill themselves, one run each, in the order the search passes them.
KILLS = [
    "write:study.json:staged", "write:spec.yaml:before", "write:spec.yaml:done",
    "write:proposals/0000.json:staged", "trial:0:merged", "trial:0:evaluated:dbl",
    "write:trials/0000.json:staged", "write:trials/0000.json:done", "trial:1:evaluated:dbl",
    "write:trials/0001.json:before", "write:optimizer.json:staged", "iteration:0:told",
    "write:proposals/0001.json:done", "trial:2:merged", "write:trials/0002.json:done",
]


def test_killed_at_any_point_the_search_resumes_without_loss(tiny_spec: Any,
                                                             tmp_path: Path) -> None:
    from mmmo.study import StudyStore

    storage = tmp_path / "studies"
    spec = tiny_spec(str(storage), name="killed",
                     objectives={"tasks": [{"task": "fixture:tasks/dbl.yaml", "limit": 4}]},
                     heldout=[], optimizer={"strategy": "random", "n_init": 2, "batch_size": 1,
                                            "iterations": 1, "seed": 0})
    log = tmp_path / "crash.log"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMMO_CRASH")}
    done = subprocess.run([sys.executable, str(driver), json.dumps(spec), str(log),
                           json.dumps(KILLS)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    codes = [code for _, code in runs]
    assert codes[-1] == 0 and all(c in (-9, 0) for c in codes), (codes, done.stderr[-3000:])

    points: dict[int, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines():
        pid, _, name = line.split(" ", 2)
        points[int(pid)].append(name)
    order = [pid for pid, _ in runs]
    died_at = [points[pid][-1] for pid, code in runs if code == -9]
    assert died_at == KILLS  # every run died where it was told to, the last one finished

    store = StudyStore(str(storage), "killed")
    trials = store.trials()
    proposed = {t.number: t.recipe_id for p in store.proposals() for t in p.trials}
    assert sorted(proposed) == [0, 1, 2] and store.pending() == []  # nothing lost
    assert {t.number: t.recipe_id for t in trials} == proposed  # evaluated as proposed
    assert all(t.status == "complete" for t in trials)

    evaluated_twice = 0
    for n in proposed:
        record = f"write:trials/{n:04d}.json:done"
        writers = [pid for pid in order if record in points[pid]]
        assert len(writers) == 1, (n, writers)  # every trial recorded exactly once
        evaluators = [pid for pid in order if f"trial:{n}:evaluated:dbl" in points[pid]]
        assert evaluators[-1] == writers[0]  # never evaluated after its record was written
        for pid in evaluators[:-1]:  # an earlier evaluation died before committing its record
            assert dict(runs)[pid] == -9 and record not in points[pid]
        evaluated_twice += len(evaluators) - 1
    for it in (0, 1):  # each proposal written once, never replaced by another
        writes = [pid for pid in order if f"write:proposals/{it:04d}.json:done" in points[pid]]
        assert len(writes) == 1, (it, writes)
    assert len(store.read_json("optimizer.json")["X"]) == 3  # the cut-off update was redone
    strays = [p.name for p in storage.rglob(".tmp-*")]  # what a kill between staging and
    assert len(strays) == sum(p.endswith(":staged") for p in KILLS)  # rename leaves, ignored
    print(f"{len(died_at)} kills at {died_at}; trials lost: 0; trials evaluated twice: "
          f"{evaluated_twice} (killed between evaluation and record); stray temp files: "
          f"{len(strays)}")
