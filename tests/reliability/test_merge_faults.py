"""A merge that fails (injected: ``MMMO_FAULTS="merge=p"``) makes a failed trial, not a crash.

The search (inline, and as the Prefect flow) spends its budget; each recipe
whose merge the injector fails is a failed trial of kind ``merge`` whose benchmarks say they
were not evaluated, and is told to the optimizer as NaN; the others complete; the pick, the
final table and the export use complete trials only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

N_INIT, BATCH = 3, 1


def _planned_ids(spec: Any) -> list[str]:
    """The recipes ``random`` proposes (its proposals do not depend on the scores)."""
    from mmmo.search import Search
    from mmmo.space import SearchSpace

    search = Search(spec, store=None, space=SearchSpace.from_spec(spec))
    X0 = search.new_optimizer().ask(N_INIT)
    opt = search.new_optimizer()
    opt.tell(X0, np.full((N_INIT, len(search.names)), np.nan))
    return [search.space.decode(x).recipe_id for x in [*X0, *opt.ask(BATCH)]]


@pytest.mark.parametrize("executor", ["inline", "prefect"])
def test_a_failed_merge_is_a_failed_trial_and_the_search_goes_on(
        executor: str, tiny_spec: Any, write_spec: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    from mmmo.engine import run_inline
    from mmmo.engine.keys import merge_key
    from mmmo.hooks import FaultPlan
    from mmmo.search import Search
    from mmmo.spec import load_spec

    path = write_spec(tmp_path / "merge-faults.yaml", tiny_spec(
        str(tmp_path / "studies"), name="merge-faults", heldout=[],
        objectives={"tasks": [{"task": "fixture:tasks/dbl.yaml", "limit": 4}]},
        optimizer={"strategy": "random", "n_init": N_INIT, "batch_size": BATCH,
                   "iterations": 1, "seed": 0}))
    spec = load_spec(path)
    ids = _planned_ids(spec)
    seed = next(s for s in range(500)  # some merges fail, in both iterations, not all
                if [FaultPlan(merge=0.5, seed=s).merge_fails(r) for r in ids]
                in ([True, False, False, True], [False, True, False, True]))
    plan = FaultPlan(merge=0.5, seed=seed)
    monkeypatch.setenv("MMMO_FAULTS", f"merge=0.5,seed={seed}")

    search = Search.open(spec)
    if executor == "prefect":
        request.getfixturevalue("prefect_harness")
        from flows.search import merge_search

        assert merge_search(spec=str(path))["complete"]
    else:
        assert run_inline(search, finish=True)
    store = search.store
    trials = store.trials()
    assert [t.recipe_id for t in trials] == ids  # the whole budget, as proposed
    for t in trials:
        if plan.merge_fails(t.recipe_id):
            assert t.status == "failed" and t.error is not None
            assert t.error["kind"] == "merge" and "injected by MMMO_FAULTS" in t.error["message"]
            assert t.benchmarks["dbl"]["message"] == "not evaluated: the merge failed"
            assert t.values == [None, None]  # told to the optimizer as NaN
            assert search.outcomes.get(merge_key(t.recipe_id)) is None  # no merge info
        else:
            assert t.status == "complete" and t.error is None
    final = store.read_json("final.json")
    assert not plan.merge_fails(final["pick"]["recipe_id"])
    assert final["export"].endswith(final["pick"]["recipe_id"])
