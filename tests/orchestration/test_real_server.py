"""The ``mmmo`` CLI against a real ``prefect server start`` on loopback, in subprocesses.

- a search killed with SIGKILL mid-iteration, resumed, ends as the uninterrupted one does;
- a re-run of the same search in a new study is all cache hits (checked through the client);
- the flow's artifacts are on the server;
- a second run on a study whose lease is held is refused with a one-line error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
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


def test_killed_search_resumes_to_the_uninterrupted_result(world: dict[str, Any]) -> None:
    storage, env = world["storage"], world["env"]
    store = StudyStore(storage, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(world["spec"]),
                             "--study", "killed"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(store.list("trials")) < 4:
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # killed in the middle of iteration 1: proposed, partly evaluated, lease left behind
    assert [p.iteration for p in store.proposals()] == [0, 1]
    pending = store.pending()
    assert 1 <= len(pending) <= 2, "killed too late to be mid-iteration"
    proposed = {t.number: t.recipe_id for p in store.proposals() for t in p.trials}
    before = {t.number: t.finished_at for t in store.trials()}
    assert store.read_lease() is not None

    resumed = world["cli"]("run", str(world["spec"]), "--study", "killed", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = store.trials()
    assert {t.number: t.finished_at for t in after if t.number in before} == before
    assert {t.number: t.recipe_id for t in after} == proposed  # evaluated as proposed
    assert _results(store) == _results(StudyStore(storage, "straight"))
    assert store.read_json("final.json")["pick"] == \
        StudyStore(storage, "straight").read_json("final.json")["pick"]


def test_rerun_is_all_cache_hits_and_artifacts_are_on_the_server(
        world: dict[str, Any]) -> None:
    started = time.time()
    again = world["cli"]("run", str(world["spec"]), "--study", "twin", env=world["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert _results(StudyStore(world["storage"], "twin")) == \
        _results(StudyStore(world["storage"], "straight"))
    states = asyncio.run(_task_states(world["env"]["PREFECT_API_URL"], "twin"))
    for name in ("merge", "evaluate-benchmark", "evaluate-reference"):
        assert states[name], f"no {name} task runs"
        assert set(states[name]) == {"Cached"}, (name, states[name])
    for name in ("propose", "record", "update-surrogate", "pick", "export", "report"):
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
