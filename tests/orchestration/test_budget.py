"""How a search spends and reports documents: confirmation, multi-fidelity, warm start.

- confirmation (through the real flow): the final table's objective columns are scored on
  documents that no search subsample used (checked on the stored indices), beside each trial
  row's estimate; ``pick.use_confirmed`` chooses among the candidates by confirmed scores;
- multi-fidelity: nested levels never score a document twice (a level's chunks are disjoint
  and make up its documents), promotions follow the documented rule (recomputed here
  independently), and a search killed in the middle of a promotion resumes to the result of
  the uninterrupted one;
- warm start: the donor's trials change the first proposal, nothing of the donor is evaluated
  again, they count for the front, not the budget; an incompatible donor is a one-line error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _spec(folder: Path, name: str, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "name": name,
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{s}"} for s in ("dbl", "rev", "srt")],
        "merge": {"method": "dare_ties", "normalize": False},
        "objectives": {"tasks": [{"task": f"fixture:tasks/{s}.yaml", "limit": 16}
                                 for s in ("dbl", "rev")]},
        "heldout": [{"task": "fixture:tasks/pair.yaml", "limit": 8}],
        "baselines": [],
        "optimizer": {"strategy": "random", "n_init": 4, "batch_size": 2, "iterations": 1,
                      "seed": 0},
        "pick": {"policy": "weighted", "weights": {"dbl": 1, "rev": 1}, "normalize": False},
        "confirm": {"max_documents": 12, "top_k": 2},
        "storage": str(folder / "studies"),
        "compute": {"device": "cpu", "batch_size": 64},
        "evaluation": {"retries": 1, "retry_delay_seconds": 0},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _indices(out: dict[str, Any]) -> set[int]:
    (rows,) = out["doc_indices"].values()
    return set(rows)


@pytest.mark.slow
def test_the_final_table_is_confirmed_on_documents_no_search_used(
        prefect_harness: None, tmp_path: Path) -> None:
    from flows.search import merge_search
    from mmmo.engine.keys import benchmark_key, reference_key
    from mmmo.engine.slots import find_session
    from mmmo.study import StudyStore

    path = _spec(tmp_path, "confirmed", pick={"use_confirmed": True})
    result = merge_search(spec=str(path))
    assert result["complete"]
    store = StudyStore(str(tmp_path / "studies"), "confirmed")
    search = find_session(store.url).search
    trials = {t.number: t for t in store.trials()}
    final = store.read_json("final.json")
    table = final["table"]
    assert table["confirmed"] and table["documents"] == {"dbl": 12, "rev": 12, "pair": 8}
    seen = set().union(*(_indices(t.benchmarks["dbl"]) for t in trials.values()))
    assert len(seen) == 16  # every trial scored the same 16 search documents
    chosen = [final["pick"]["number"], *(c["number"] for c in final["pick"]["candidates"])]
    assert len(chosen) == 3
    for task in ("dbl", "rev"):
        docs = search.final_docs(task)
        for number in chosen:  # the trials' confirmed cells
            out = search.outcomes.get(benchmark_key(search, trials[number].recipe_id, task,
                                                    docs))
            assert out["n_docs"] == 12 and not _indices(out) & seen, (number, task)
        out = search.outcomes.get(reference_key(search, "base", task, docs))
        assert out["n_docs"] == 12 and not _indices(out) & seen  # reference rows alike
    estimates = table["estimates"]
    pick_row = f"pick (trial {final['pick']['number']})"
    assert estimates[pick_row]["dbl"] == trials[final["pick"]["number"]].objectives["dbl"]
    # use_confirmed: the pick is the best candidate by the confirmed sum of dbl + rev
    confirmed = {n: sum(table["rows"][r][t] for t in ("dbl", "rev"))
                 for n in chosen for r in table["rows"] if r.endswith(f"trial {n})")
                 or r == f"trial {n} (front)"}
    assert final["pick"]["by"] == "confirmed"
    assert confirmed[final["pick"]["number"]] == max(confirmed.values())
    report = store.read_bytes("reports/report.md").decode()
    assert "**confirmed** scores" in report and "(its subsample score" in report


def test_a_task_too_small_to_confirm_is_refused(tmp_path: Path) -> None:
    from mmmo.errors import SpecError
    from mmmo.search import check_inputs
    from mmmo.spec import load_spec

    spec = load_spec(_spec(tmp_path, "small", objectives={"tasks": [
        {"task": "fixture:tasks/dbl.yaml", "limit": 1.0}]}, pick={"weights": {"dbl": 1}}))
    with pytest.raises(SpecError) as info:
        check_inputs(spec)
    assert str(info.value).startswith("objectives.tasks[0].limit: uses all 300 documents of "
                                      "dbl, leaving none to confirm the final table on")
    assert "fix: lower it (e.g. to 200)" in str(info.value)


FIDELITY = {"fidelity": {"levels": [0.25, 0.5, 1.0], "eta": 2}, "n_init": 6}

KILLED = """
import sys
import torch
torch.set_num_threads(int(sys.argv[2]))  # as the test's process: the same CPU sums
from mmmo.engine import run
from mmmo.spec import load_spec
run(load_spec(sys.argv[1]), inline=True, finish=False)
"""


@pytest.mark.slow
def test_fidelity_levels_promotions_and_a_kill_mid_promotion(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mmmo.engine import run
    from mmmo.engine.keys import benchmark_key
    from mmmo.engine.slots import find_session
    from mmmo.fidelity import Levels
    from mmmo.spec import load_spec
    from mmmo.study import StudyStore

    straight = load_spec(_spec(tmp_path, "levels", optimizer=FIDELITY))
    assert run(straight, inline=True, finish=False)["complete"]
    store = StudyStore(straight.storage, "levels")
    search = find_session(store.url).search
    trials = {t.number: t for t in store.trials()}
    proposals = store.proposals()
    promoted = [p for p in proposals if p.kind == "promote"]
    assert len(promoted) >= 2 and max(t.level for t in trials.values()) == 2

    # nested levels: each chunk is disjoint from the others, and they make up the level
    levels = Levels(straight)
    for t in trials.values():
        for task in straight.objectives.tasks:
            chunks = [search.outcomes.get(benchmark_key(search, t.recipe_id, task.label, c))
                      for c in levels.chunks(task, t.level)]
            sets = [_indices(c) for c in chunks]
            assert sum(map(len, sets)) == len(set().union(*sets))  # never scored twice
            assert len(set().union(*sets)) == t.documents[task.label] == [4, 8, 16][t.level]
            assert _indices(t.benchmarks[task.label]) == set().union(*sets)

    # the rule, recomputed: after each iteration, the best floor(n / eta) at each level by the
    # weighted sum (raw) of dbl + rev, ties to the Pareto-optimal (sparsity included) then to
    # the lower number, of the trials of that iteration and the earlier ones
    from mmmo.optimization import pareto_mask

    def best(level: int, upto: int) -> set[int]:
        entries = {n: t.history[str(level)]["values"] for n, t in trials.items()
                   if str(level) in t.history and t.history[str(level)]["iteration"] <= upto}
        numbers = sorted(entries)
        front = dict(zip(numbers, pareto_mask(np.array([entries[n] for n in numbers])),
                         strict=True))
        k = math.floor(len(entries) / 2)
        ranked = sorted(numbers, key=lambda n: (-sum(entries[n][:2]), not front[n], n))
        return set(ranked[:k])

    for t in trials.values():
        for level in (1, 2):
            if str(level) in t.history:
                assert t.number in best(level - 1, t.history[str(level)]["iteration"])
    for iteration in (0, 1):
        for level in (0, 1):
            for n in best(level, iteration):
                assert str(level + 1) in trials[n].history, (n, level, iteration)

    # killed in the middle of the second promotion (its proposal written, its first forward
    # pass cut off), then resumed: the same proposals and trials as the uninterrupted search
    point = f"write:proposals/{promoted[1].sequence:04d}.json:done >> benchmark:forward"
    killed = _spec(tmp_path / "k", "levels", optimizer=FIDELITY)
    import torch

    threads = str(torch.get_num_threads())
    done = subprocess.run([sys.executable, "-c", KILLED, str(killed), threads],
                          capture_output=True,
                          text=True, timeout=600, env={**os.environ, "MMMO_CRASH_AT": str(point),
                                                       "TQDM_DISABLE": "1"})
    assert done.returncode == -9, done.stderr[-2000:]
    cut = StudyStore(str(tmp_path / "k" / "studies"), "levels")
    assert [p.sequence for p in cut.proposals()][-1] == promoted[1].sequence
    assert {(t.number, t.level) for t in cut.pending()} == \
        {(t.number, t.level) for t in promoted[1].trials}  # the promotion in flight
    assert run(load_spec(killed), inline=True, finish=False)["complete"]
    assert [(t.number, t.level, t.objectives) for t in cut.trials()] == \
        [(t.number, t.level, t.objectives) for t in store.trials()]
    assert [(p.kind, p.iteration, [(x.number, x.level) for x in p.trials])
            for p in cut.proposals()] == \
        [(p.kind, p.iteration, [(x.number, x.level) for x in p.trials]) for p in proposals]


def test_warm_start_changes_the_first_proposal_and_evaluates_nothing_of_the_donor(
        tmp_path: Path) -> None:
    from mmmo.engine import run
    from mmmo.engine.slots import find_session
    from mmmo.errors import SpecError
    from mmmo.search import check_inputs
    from mmmo.spec import load_spec
    from mmmo.study import StudyStore

    donor = load_spec(_spec(tmp_path / "d", "donor"))
    assert run(donor, inline=True, finish=False)["complete"]
    donor_trials = StudyStore(donor.storage, "donor").trials()
    url = f"{donor.storage}/donor"
    cheap = {"strategy": "qehvi", "n_init": 2, "batch_size": 2, "iterations": 0,
             "settings": {"num_restarts": 1, "raw_samples": 32, "mc_samples": 32}}
    cold = load_spec(_spec(tmp_path / "c", "cold", optimizer=cheap))
    warm = load_spec(_spec(tmp_path / "w", "warm", optimizer={**cheap, "warm_start": [url]}))
    check_inputs(warm)
    for spec in (cold, warm):
        assert run(spec, inline=True, finish=False)["complete"]
    first = [StudyStore(s.storage, s.study_name).proposals()[0].trials for s in (cold, warm)]
    assert [t.x for t in first[0]] != [t.x for t in first[1]]
    search = find_session(f"{warm.storage}/warm").search
    told = search.replay(search.store.trials(), upto=0)
    assert told.n_told == len(donor_trials)  # the donor's trials, told before the first ask
    assert np.allclose(told.X, [t.x for t in donor_trials])
    own = StudyStore(warm.storage, "warm").trials()
    assert len(own) == 2  # the budget is the study's own
    donor_ids = {t.recipe_id for t in donor_trials}
    assert not {t.recipe_id for t in own} & donor_ids  # nothing of the donor evaluated again
    assert {t.number for t in search.pool()} == {-1, -2, -3, -4, -5, -6, 0, 1}

    other = load_spec(_spec(tmp_path / "x", "other", optimizer={"warm_start": [url]},
                            merge={"method": "ties"}))
    with pytest.raises(SpecError, match=r"^optimizer.warm_start\[0\]: searched a different "
                       r"merge method \(dare_ties vs ties\)"):
        check_inputs(other)
