"""Where a fixture search's wall time goes, run as a Prefect flow against a running server.

    python benchmarks/flow_overhead.py [--spec examples/fixture.yaml] [--api URL] [--noop 100]

1. Starts ``prefect server start`` on loopback (unless ``--api`` names one).
2. Runs ``mmmo run SPEC`` in a subprocess against it (a fresh study in a temporary directory)
   and times it; then the same command again (the study is complete: nothing is re-evaluated)
   and, with ``--twin``, a new study of the same spec (every Prefect task a cache hit).
3. Splits the first run's wall time using the study's own records: merge (mergekit, in
   memory), model forward passes (inside lm-eval), the rest of lm-eval (tokenising, batching,
   metrics), optimizer asks, and everything else — Prefect (task runs, result persistence,
   API calls), study writes, process start-up, held-out evaluation, export and report. The
   "orchestration overhead" is the fraction outside merge + forward passes.
4. Task runs as the server saw them: count and mean seconds per task name.
5. Seconds per Prefect task on that server: a flow of ``--noop`` no-op tasks, run inline
   (``task()`` calls) and submitted to the thread pool runner.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_search(spec: str, study: str, storage: str, env: dict[str, str]) -> tuple[float, float]:
    """``mmmo run`` in a subprocess; returns its start (epoch seconds) and wall time."""
    started, t0 = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", spec, "--study", study,
                           "--storage", storage], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"mmmo run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return started, wall


def _epoch(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp).timestamp()


def breakdown(storage: str, study: str, started: float, wall: float) -> dict[str, Any]:
    """Phases of one run from the study's own timestamps, and the work inside the search."""
    from mmmo.study import StudyStore

    store = StudyStore(storage, study)
    trials, proposals = store.trials(), store.proposals()
    first = min(_epoch(p.created_at) - p.seconds for p in proposals)  # before the first ask
    last = max(_epoch(t.finished_at) for t in trials)
    final = float(store.read_json("final.json")["finished_at"])
    work: dict[str, float] = defaultdict(float)
    for trial in trials:
        work["merge (mergekit, in memory)"] += trial.timings.get("merge_s", 0.0)
        for bench in trial.benchmarks.values():
            fwd = float(bench.get("forward_seconds") or 0.0)
            work["model forward passes"] += fwd
            work["rest of lm-eval"] += float(bench.get("seconds") or 0.0) - fwd
    work["optimizer asks"] = sum(p.seconds for p in proposals)
    return {"trials": len(trials), "work": dict(work),
            "phases": {"start-up, validation, study open": first - started,
                       "search (all iterations)": last - first,
                       "final table, held-out, export": final - last,
                       "report, artifacts, exit": started + wall - final}}


async def task_runs(api_url: str) -> dict[str, list[float]]:
    """Wall seconds of every finished task run on the server, by task name."""
    from prefect.client.orchestration import PrefectClient

    out: dict[str, list[float]] = defaultdict(list)
    async with PrefectClient(api_url) as client:
        offset = 0
        while True:
            page = await client.read_task_runs(limit=200, offset=offset)
            if not page:
                break
            offset += len(page)
            for tr in page:
                if tr.start_time and tr.end_time:
                    out[tr.name.rsplit("-", 1)[0]].append(
                        (tr.end_time - tr.start_time).total_seconds())
    return dict(out)


def noop_tasks(api_url: str, n: int) -> tuple[float, float]:
    """Seconds per no-op task on the server: called inline, and submitted to threads."""
    code = f"""
import time
from prefect import flow, task

@task
def noop(i: int) -> int:
    return i

@flow
def inline_flow(n: int) -> None:
    for i in range(n):
        noop(i)

@flow
def submit_flow(n: int) -> None:
    [f.result() for f in [noop.submit(i) for i in range(n)]]

inline_flow({n})   # warm-up: flow and task registration
t = time.perf_counter(); inline_flow({n}); a = time.perf_counter() - t
t = time.perf_counter(); submit_flow({n}); b = time.perf_counter() - t
print(a / {n}, b / {n})
"""
    env = {**os.environ, "PREFECT_API_URL": api_url,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    a, b = done.stdout.split()[-2:]
    return float(a), float(b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "fixture.yaml"))
    parser.add_argument("--api", default=None, help="a running Prefect server's API URL")
    parser.add_argument("--noop", type=int, default=100, help="no-op tasks to time")
    parser.add_argument("--twin", action="store_true",
                        help="also run a new study of the same spec (every task a cache hit)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
    from flows.local_server import start_local_server, stop_local_server
    from mmmo.fixtures import ensure_family

    ensure_family()
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        tmpdir = Path(tmp)
        proc = None
        api = args.api
        if api is None:
            (tmpdir / "server").mkdir()
            proc, api = start_local_server(tmpdir / "server", timeout=180)
        try:
            env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmpdir / "home")}
            storage = str(tmpdir / "studies")
            started, wall = run_search(args.spec, "overhead", storage, env)
            parts = breakdown(storage, "overhead", started, wall)
            _, same = run_search(args.spec, "overhead", storage, env)
            twin = run_search(args.spec, "overhead-twin", storage, env)[1] if args.twin else None
            runs = asyncio.run(task_runs(api))
            per_task = noop_tasks(api, args.noop)
        finally:
            if proc is not None:
                stop_local_server(proc, timeout=30)
    phases, work = parts["phases"], parts["work"]
    search = phases["search (all iterations)"]
    print(f"fixture search ({parts['trials']} trials) through `mmmo run`, Prefect server on "
          f"loopback, {os.cpu_count()} CPUs\n")
    print(f"wall time, first run                         {wall:8.1f} s")
    print(f"same command again (study complete)          {same:8.1f} s   ratio {same / wall:.2f}")
    if twin is not None:
        print(f"new study, same spec (every task cached)     {twin:8.1f} s   "
              f"ratio {twin / wall:.2f}")
    print("\nfirst run, phases:")
    for name, secs in phases.items():
        print(f"  {name:36s} {secs:8.1f} s  {100 * secs / wall:5.1f} %")
    print("\ninside the search phase (sums over trials; a trial's benchmarks run in parallel "
          "threads, so sums can overlap):")
    for name, secs in work.items():
        print(f"  {name:36s} {secs:8.1f} s  {100 * secs / search:5.1f} % of the search phase")
    core = work["merge (mergekit, in memory)"] + work["model forward passes"]
    print(f"\norchestration overhead: {100 * (1 - core / search):.1f} % of the search phase and "
          f"{100 * (1 - core / wall):.1f} % of the whole run lie outside merge + forward passes")
    print("\ntask runs on the server (all runs): count, mean seconds")
    for name, secs in sorted(runs.items()):
        print(f"  {name:24s} {len(secs):4d}  {statistics.fmean(secs):7.3f}")
    print(f"\nno-op Prefect task on this server: {per_task[0]:.3f} s each called inline, "
          f"{per_task[1]:.3f} s each submitted to threads ({args.noop} tasks)")


if __name__ == "__main__":
    main()
