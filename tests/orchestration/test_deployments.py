"""The README's deployment commands against a real Prefect server: pool, deploy, run, serve."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mmmo.study import StudyStore

ROOT = Path(__file__).resolve().parents[2]


def _env(api_url: str, home: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home),
            "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def _sh(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


async def _deployments(api_url: str) -> dict[str, Any]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        out = {}
        for dep in await client.read_deployments():
            flow = await client.read_flow(dep.flow_id)
            out[f"{flow.name}/{dep.name}"] = dep
        return out


async def _flow_run_state(api_url: str, flow_run_id: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        run = await client.read_flow_run(flow_run_id)
        return run.state.name if run.state else "?"


@pytest.mark.slow
def test_deploy_run_through_a_worker_and_serve(prefect_server: str, tmp_path: Path,
                                               make_spec: Any) -> None:
    env = _env(prefect_server, tmp_path / "home")
    storage = tmp_path / "studies"
    spec = make_spec(tmp_path, storage=str(storage), limit=8, n_init=2, iterations=0)

    _sh(["bash", "deployments/gpu-pool.sh", "create"], env)
    _sh(["prefect", "--no-prompt", "deploy", "--all"], env)
    deployments = asyncio.run(_deployments(prefect_server))
    assert {"merge-search/search", "resume-search/nightly-resume"} <= set(deployments)
    nightly = deployments["resume-search/nightly-resume"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert deployments["merge-search/search"].work_pool_name == "mmmo-gpu"

    out = _sh(["prefect", "deployment", "run", "merge-search/search", "-p", f"spec={spec}",
               "-p", "study=deployed"], env)
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    _sh(["prefect", "worker", "start", "--pool", "mmmo-gpu", "--run-once"], env, timeout=600)
    assert asyncio.run(_flow_run_state(prefect_server, run_id)) == "Completed"
    store = StudyStore(str(storage), "deployed")
    assert len(store.trials()) == 2 and store.exists("final.json")

    serve = subprocess.Popen([sys.executable, "deployments/serve.py", "--study", "deployed",
                              "--storage", str(storage)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        names: set[str] = set()
        while time.time() < deadline:
            names = set(asyncio.run(_deployments(prefect_server)))
            if {"merge-search/search-served", "resume-search/nightly-resume-served"} <= names:
                break
            assert serve.poll() is None, "serve.py exited"
            time.sleep(1)
        assert "resume-search/nightly-resume-served" in names, names
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
