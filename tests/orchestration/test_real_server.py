"""The ``mmmo`` CLI against a real ``prefect server start`` on loopback, in subprocesses.

- a re-run of the same search in a new study merges and evaluates nothing (every result is in
  the result store), and every step is a completed task run on the server;
- the flow's artifacts are on the server;
- a second run on a study whose lease is held is refused with a one-line error.

(Kills at 25 points under the flow: tests/reliability/test_kill_anywhere.py.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from mmmo.study import StudyStore


@pytest.fixture(scope="module")
def world(prefect_server: str, tmp_path_factory: pytest.TempPathFactory, make_spec: Any,
          run_cli: Any, cli_environ: Any) -> dict[str, Any]:
    """A spec, a storage folder, the CLI's environment, and one uninterrupted run."""
    root = tmp_path_factory.mktemp("cli")
    storage = str(root / "studies")
    spec = make_spec(root, storage=storage, limit=24, n_init=3, batch=3, iterations=1)
    env = cli_environ(prefect_server, root / "home")
    started = time.time()
    run = run_cli("run", str(spec), "--study", "straight", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    # the console shows our progress only: no lm-eval/datasets tqdm bars
    assert "it/s]" not in run.stderr and "examples/s]" not in run.stderr, run.stderr[-2000:]
    return {"root": root, "storage": storage, "spec": spec, "env": env, "cli": run_cli,
            "straight_seconds": time.time() - started}


def _results(store: StudyStore) -> list[tuple[int, str, str, dict[str, Any]]]:
    return [(t.number, t.recipe_id, t.status, t.objectives) for t in store.trials()]


@pytest.mark.slow
def test_rerun_is_all_cache_hits_and_artifacts_are_on_the_server(
        world: dict[str, Any], tmp_path: Path) -> None:
    started = time.time()
    log = tmp_path / "points.log"  # every crash point the run passes (none is a kill)
    again = world["cli"]("run", str(world["spec"]), "--study", "twin",
                         env={**world["env"], "MMMO_CRASH_LOG": str(log)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert _results(StudyStore(world["storage"], "twin")) == \
        _results(StudyStore(world["storage"], "straight"))
    points = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
    assert "benchmark:forward" not in points  # nothing evaluated again
    assert points.count("merge:halfway") <= 1  # merged once at most: to export the pick
    states = asyncio.run(_task_states(world["env"]["PREFECT_API_URL"], "twin"))
    for name in ("propose", "merge", "evaluate-benchmark", "record", "update-surrogate",
                 "pick", "evaluate-cell", "export", "report"):
        assert states[name] and set(states[name]) == {"Completed"}, (name, states[name])
    keys = asyncio.run(_artifact_keys(world["env"]["PREFECT_API_URL"]))
    for what in ("trials", "progress", "report"):
        assert f"mmmo-straight-{what}" in keys, keys
    print(f"uninterrupted run {world['straight_seconds']:.1f} s; cached re-run "
          f"{time.time() - started:.1f} s")


async def _task_states(api_url: str, study: str) -> dict[str, list[str]]:
    """State names of every task run of the ``merge-search`` run of ``study`` (+ subflows)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with PrefectClient(api_url) as client:
        runs = [r for r in await client.read_flow_runs()
                if r.parameters.get("study") == study]
        assert len(runs) == 1, [r.parameters for r in runs]
        ids = [runs[0].id]
        children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids)))
        ids += [c.id for c in children]
        task_runs = []
        for flow_run_id in ids:
            task_runs += await client.read_task_runs(flow_run_filter=FlowRunFilter(
                id={"any_": [flow_run_id]}))
    out: dict[str, list[str]] = {}
    for tr in task_runs:
        name = tr.name.rsplit("-", 1)[0]
        out.setdefault(name, []).append(tr.state.name if tr.state else "?")
    return out


async def _artifact_keys(api_url: str) -> set[str]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        return {a.key for a in await client.read_artifacts() if a.key}


def test_a_second_run_on_a_held_study_is_refused(world: dict[str, Any]) -> None:
    store = StudyStore(world["storage"], "straight")
    lease = store.acquire_lease(ttl=600, holder="other-host:4242:abcd")
    try:
        refused = world["cli"]("run", str(world["spec"]), "--study", "straight", env=world["env"])
    finally:
        store.release_lease(lease)
    assert refused.returncode == 2
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: study 'straight' is held by a running search "
                               "(other-host:4242:abcd, lease valid until")
    assert "Traceback" not in refused.stderr
