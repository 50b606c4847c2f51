"""Kill anywhere: a search SIGKILLed at 25 different points, resumed each time, loses nothing.

Run on both executors: the inline one (:func:`mmmo.engine.run`, every step in one thread) and
the Prefect flow (the steps as tasks of ``merge-search``, against the session's real Prefect
server). A driver process (one interpreter: imports, tasks and the resident models loaded
once, torch on one thread so that forking is safe) forks one run after another of the same
study. Each run resumes the study and kills itself (``MMMO_CRASH_AT``, :mod:`mmmo.hooks`) at
the next crash point of :data:`KILLS`, in search order: creating the study, taking the lease,
during propose (after the optimizer's ask), half way through a merge, mid-benchmark (in a model
forward pass), around every kind of write to the study and the result store (before, temp file
staged, renamed), after telling the optimizer, and in the last stage (a reference model's
benchmark, the export, ``final.json``, the report). Then one run finishes it, and one
uninterrupted run of the same search (another storage, so that nothing is shared) is the
control. After every run the driver reads the whole store back.

Figures: trials lost 0; benchmark results computed twice 0 (each result is written once, and a
resumed run re-uses it); store readable after every kill; the finished study equals the
uninterrupted one (trials, pick, table, exported weights byte for byte).
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

DRIVER = r'''
import json, os, sys, traceback
import torch
torch.set_num_threads(1)  # no OpenMP worker threads: forking is safe
from mmmo.engine import run
from mmmo.engine.outcomes import OutcomeStore
from mmmo.engine.slots import Slot, slot_devices
from mmmo.search import check_inputs
from mmmo.spec import load_spec
from mmmo.study import StudyStore

spec_path, control_path, log, kills, executor = sys.argv[1:6]
spec, control = load_spec(spec_path), load_spec(control_path)
check_inputs(spec)  # tasks loaded and pooled once, inherited by every run
Slot(spec, 0, slot_devices(spec)[0]).backend  # base and sources resident once, inherited
if executor == "prefect":
    from flows.search import merge_search


def run_once(crash_at, path, spec):
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["MMMO_CRASH_LOG"] = log
            if crash_at:
                os.environ["MMMO_CRASH_AT"] = str(crash_at)
            if executor == "prefect":
                out = merge_search(spec=path)
            else:
                out = run(spec, inline=True)
            os._exit(0 if out["complete"] else 3)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return pid, os.waitstatus_to_exitcode(status), readable(spec)


def readable(spec):
    # read the whole store back: every record parses, the study's views load
    store = StudyStore(spec.storage, spec.study_name)
    if not store.exists():
        return "no study yet"
    store.load_spec(), store.metadata(), store.trials(), store.proposals(), store.pending()
    for rel in ("optimizer.json", "final.json", "lease.json"):
        if store.exists(rel):
            store.read_json(rel)
    outcomes = OutcomeStore(spec.storage)
    for key in outcomes.keys():
        outcomes.get(key)
    return "ok"


runs = [run_once(point, spec_path, spec) for point in json.loads(kills)]
runs.append(run_once(None, spec_path, spec))
runs.append(run_once(None, control_path, control))
print(json.dumps(runs))
'''


#: Where the runs kill themselves, one run each, in the order the search passes them (a
#: pattern matches the first point of that name the run passes).
KILLS = [
    "write:study.json:staged", "write:spec.yaml:done", "write:lease.json:staged",
    "iteration:0:asked", "write:proposals/0000.json:staged",
    "merge:halfway", "write:merge-*:staged", "merge:done:*", "benchmark:forward",
    "write:bench-*:staged", "benchmark:done:dbl",
    "write:trials/0000.json:staged", "write:trials/0000.json:done",
    "write:bench-*:done", "write:trials/0001.json:before",
    "write:optimizer.json:staged", "iteration:0:told", "iteration:1:asked",
    "write:proposals/0001.json:done", "write:trials/0002.json:done",
    "benchmark:forward", "write:ref-*:staged", "export:staged",
    "write:final.json:staged", "write:reports/report.md:before",
]
#: Kills that cut off a benchmark before its result was written (it is run again, once).
CUT_OFF = {"benchmark:forward", "write:bench-*:staged", "write:ref-*:staged"}
_RESULT = ("merge-", "bench-", "ref-")


@pytest.fixture(params=["inline", "prefect"])
def executor(request: pytest.FixtureRequest) -> str:
    """Which executor runs the search: inline, or the Prefect flow (on the session's server)."""
    if request.param == "prefect":
        request.getfixturevalue("prefect_server")
    return request.param


@pytest.mark.slow
def test_killed_at_any_point_the_search_resumes_without_loss(
        executor: str, tiny_spec: Any, write_spec: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    from safetensors.torch import load_file

    from mmmo.merging.export import read_export
    from mmmo.study import StudyStore

    storage, other = tmp_path / "studies", tmp_path / "control"
    search = {"objectives": {"tasks": [{"task": "fixture:tasks/dbl.yaml", "limit": 4}]},
              "heldout": [], "optimizer": {"strategy": "random", "n_init": 2, "batch_size": 1,
                                           "iterations": 1, "seed": 0}}
    spec = write_spec(tmp_path / "killed.yaml", tiny_spec(str(storage), name="killed",
                                                          **search))
    control = write_spec(tmp_path / "straight.yaml", tiny_spec(str(other), name="killed",
                                                               **search))
    log = tmp_path / "crash.log"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMMO_CRASH")}
    if executor == "prefect":
        env.update(PREFECT_API_URL=request.getfixturevalue("prefect_server"),
                   PREFECT_HOME=str(tmp_path / "prefect-home"),
                   PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="CRITICAL")
    done = subprocess.run([sys.executable, str(driver), str(spec), str(control), str(log),
                           json.dumps(KILLS), executor], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    *killed, (last_pid, last_code, _), (straight_pid, straight_code, _) = runs
    assert last_code == 0 and straight_code == 0, (runs, done.stderr[-3000:])
    assert [code for _, code, _ in killed] == [-9] * len(KILLS), done.stderr[-3000:]
    assert {state for *_, state in runs[1:]} == {"ok"}  # store readable after every kill

    points: dict[int, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines():
        pid, _, name = line.split(" ", 2)
        points[int(pid)].append(name)
    died_at = [points[pid][-1] for pid, _, _ in killed]
    assert all(fnmatch.fnmatchcase(d, k) for d, k in zip(died_at, KILLS, strict=True)), died_at
    search_pids = [pid for pid, _, _ in killed] + [last_pid]

    store, control = StudyStore(str(storage), "killed"), StudyStore(str(other), "killed")
    trials = store.trials()
    proposed = {t.number: t.recipe_id for p in store.proposals() for t in p.trials}
    assert sorted(proposed) == [0, 1, 2] and store.pending() == []  # nothing lost
    assert {t.number: t.recipe_id for t in trials} == proposed  # evaluated as proposed
    assert all(t.status == "complete" for t in trials)

    # every write of the killed study, over all its runs: each happened once (final.json and
    # the report are written again, the same, when a kill cut off the report)
    writes = Counter(name.removeprefix("write:").removesuffix(":done")
                     for pid in search_pids for name in points[pid]
                     if name.startswith("write:") and name.endswith(":done"))
    for rel in ["study.json", "spec.yaml", *(f"trials/{n:04d}.json" for n in proposed),
                "proposals/0000.json", "proposals/0001.json"]:
        assert writes[rel] == 1, (rel, writes[rel])
    results = {rel: n for rel, n in writes.items() if rel.startswith(_RESULT)}
    confirmed = 1 + len(store.read_json("final.json")["pick"]["candidates"])
    # merge infos, benchmarks of the trials, single models, and the final table's trials on
    # the documents no trial saw (the pick and its candidates)
    assert len(results) == 3 + 3 + 4 + confirmed
    computed_twice = sum(n - 1 for n in results.values())
    assert computed_twice == 0, results
    cut_off = sum(k in CUT_OFF for k in KILLS)
    forwards = sum(name == "benchmark:forward" for pid in search_pids for name in points[pid])
    assert forwards == 3 + 4 + confirmed + cut_off  # a cut-off benchmark ran again once

    # the finished study is the uninterrupted one
    assert [(t.number, t.recipe_id, t.objectives) for t in trials] == \
        [(t.number, t.recipe_id, t.objectives) for t in control.trials()]
    final, straight = store.read_json("final.json"), control.read_json("final.json")
    assert final["pick"] == straight["pick"] and final["table"] == straight["table"]
    info, control_info = read_export(final["export"]), read_export(straight["export"])
    assert info is not None and control_info is not None
    assert info.recipe_id == final["pick"]["recipe_id"] and info.files == control_info.files
    ours = load_file(str(Path(final["export"]) / "model.safetensors"))
    theirs = load_file(str(Path(straight["export"]) / "model.safetensors"))
    assert all(ours[k].equal(theirs[k]) for k in theirs) and ours.keys() == theirs.keys()
    assert all(store.exists(f"reports/{f}") for f in ("report.md", "report.html"))
    leftovers = [p for p in storage.rglob(".*") if ".tmp-" in p.name or ".partial-" in p.name]
    assert leftovers == []  # what kills mid-write left was swept by the next run
    print(f"{executor}: {len(KILLS)} kills at {died_at}; trials lost: 0; results computed twice: "
          f"{computed_twice}; benchmarks cut off by a kill and run again: {cut_off}; store "
          f"readable after {len(killed)}/{len(killed)} kills; same trials, pick, table and "
          "exported weights as the uninterrupted run; leftovers after the last run: 0")
