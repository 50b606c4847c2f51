"""Distributed slots on a real Dask cluster (``distributed.LocalCluster``, 2 worker processes).

- an asynchronous ``mmmo`` search as the Prefect flow on the cluster: every trial recorded
  once, each worker built its resident models once, and the results equal those of a threads
  run that evaluates the same proposals;
- a worker process killed mid-trial (SIGKILL in a forward pass): that trial re-runs on a
  worker, nothing is lost or recorded twice, the search completes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("distributed")

CHEAP_MMMO = {"n_candidates": 3, "num_restarts": 1, "raw_samples": 32, "mc_samples": 32}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two worker processes, one ``GPU`` resource each (one trial per worker at a time)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           resources={"GPU": 1}, dashboard_address=None,
                           silence_logs=logging.ERROR)
    try:
        yield cluster
    finally:
        cluster.close()


def _spec(folder: Path, storage: Path, address: str | None, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "dask",
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{s}"} for s in ("dbl", "rev", "srt")],
        "merge": {"method": "dare_ties", "normalize": False},
        "objectives": {"tasks": [{"task": f"fixture:tasks/{s}.yaml", "limit": 8}
                                 for s in ("dbl", "rev")]},
        "heldout": [],
        "baselines": [],
        "optimizer": {"strategy": "mmmo", "n_init": 3, "batch_size": 2, "iterations": 1,
                      "seed": 0, "schedule": "async", "settings": CHEAP_MMMO},
        "storage": str(storage),
        "compute": {"device": "cpu", "batch_size": 64, "max_concurrent_trials": 2,
                    **({"runner": "dask", "runner_address": address} if address else {})},
        "evaluation": {"retries": 1, "retry_delay_seconds": 0},
    }
    data.update(changes)
    path = folder / f"{data['name']}-{'dask' if address else 'threads'}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _loads(cluster: Any) -> dict[str, int]:
    from distributed import Client

    from mmmo.engine.dask import worker_loads

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        return {addr: info["backends"] for addr, info in client.run(worker_loads).items()}


@pytest.mark.slow
def test_async_search_on_the_cluster_equals_threads(cluster: Any, prefect_harness: None,
                                                    tmp_path: Path) -> None:
    from flows.search import merge_search
    from mmmo.engine import run
    from mmmo.spec import load_spec
    from mmmo.study import StudyStore

    storage = tmp_path / "studies"
    result = merge_search(spec=str(_spec(tmp_path, storage, cluster.scheduler_address)))
    assert result["complete"]
    store = StudyStore(str(storage), "dask")
    trials = store.trials()
    proposals = store.proposals()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # the budget, exactly
    assert [len(p.trials) for p in proposals] == [1] * 5  # one recipe per free slot
    assert sorted(t.order for t in trials) == [0, 1, 2, 3, 4]  # each recorded once
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    workers = {t.worker for t in trials}
    assert len(workers) == 2  # both slots worked
    assert set(_loads(cluster).values()) == {1}  # models loaded once per worker

    # the same proposals, evaluated by a threads run in a fresh storage: the same results
    other = tmp_path / "threads"
    (other / "dask").mkdir(parents=True)
    for part in ("spec.yaml", "study.json", "proposals"):
        src = storage / "dask" / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, other / "dask" / part)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Dask's workers (OMP_NUM_THREADS=1): the same CPU sums
    try:
        again = run(load_spec(_spec(tmp_path, other, None)), finish=False)
    finally:
        torch.set_num_threads(threads)
    assert again["complete"]
    twin = StudyStore(str(other), "dask")
    assert [p.model_dump(exclude={"created_at"}) for p in twin.proposals()] == \
        [p.model_dump(exclude={"created_at"}) for p in proposals]  # nothing proposed anew
    assert {t.number: t.objectives for t in twin.trials()} == \
        {t.number: t.objectives for t in trials}


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_nothing(cluster: Any, tmp_path: Path) -> None:
    from distributed import Client

    from mmmo.engine import run
    from mmmo.spec import load_spec
    from mmmo.study import StudyStore

    log, once = tmp_path / "crash.log", tmp_path / "crashed-once"
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        # the first forward pass on a worker kills that worker (once, whichever it is)
        client.run(lambda: __import__("os").environ.update(
            MMMO_CRASH_AT="benchmark:forward", MMMO_CRASH_ONCE=str(once),
            MMMO_CRASH_LOG=str(log)))
        storage = tmp_path / "studies"
        spec = load_spec(_spec(tmp_path, storage, cluster.scheduler_address, name="killed"))
        result = run(spec, finish=False)
        client.run(lambda: [__import__("os").environ.pop(k, None)
                            for k in ("MMMO_CRASH_AT", "MMMO_CRASH_ONCE", "MMMO_CRASH_LOG")])
    assert result["complete"]
    dead = int(once.read_text().split()[0])  # the worker process that died mid-benchmark
    passed = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert [p for p, _, name in passed if name == "benchmark:forward"][0] == str(dead)
    trials = StudyStore(str(storage), "killed").trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert sorted(t.order for t in trials) == [0, 1, 2, 3, 4]  # none recorded twice
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    assert all(not t.worker.endswith(f":{dead}") for t in trials)  # re-ran elsewhere
