"""How long a Prefect API takes to answer: Prefect's temporary server vs the ones mm-mo spawns.

    python benchmarks/server_startup.py [--rounds 3]

Each way is started from a fresh Python process that has already imported ``prefect`` (as the
``mmmo`` CLI has by then), and timed from there until ``/api/health`` answers:

- ``ephemeral``: Prefect's own temporary server (``SubprocessASGIServer().start()``, what a flow
  run without PREFECT_API_URL triggers; it survives a SIGKILL of its parent);
- ``api``: :func:`flows.local_server.start_local_server` ``kind="api"`` (uvicorn + Prefect's
  API app, no UI, no services, under mm-mo's watchdog);
- ``full``: ``kind="full"`` (``prefect server start`` with UI and services, under the watchdog).

Both a *cold* home (a fresh SQLite database: migrations run) and a *warm* one (the database
of an earlier start) are measured, ways interleaved round by round. Prints the medians and the
ratios to ``ephemeral``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
import prefect  # noqa: F401  (the CLI has imported it by the time it needs a server)
way = {way!r}
t0 = time.perf_counter()
if way == "ephemeral":
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    server.start(timeout=180)
    elapsed = time.perf_counter() - t0
    server.stop()
else:
    from flows.local_server import start_local_server
    server = start_local_server(kind=way, timeout=180)
    elapsed = time.perf_counter() - t0
    server.stop()
print(json.dumps({{"seconds": elapsed}}))
"""


def measure(way: str, home: Path) -> float:
    """Seconds until the API of ``way`` answers, in a fresh process using ``home``."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), way=way)],
                          env=env, capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ways", default="ephemeral,api,full")
    args = parser.parse_args()
    ways = args.ways.split(",")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for way in ways:
                home = Path(tmp) / f"{way}-{r}"
                home.mkdir()
                times.setdefault((way, "cold"), []).append(measure(way, home))
                times.setdefault((way, "warm"), []).append(measure(way, home))
                print(f"round {r} {way}: cold {times[way, 'cold'][-1]:.2f} s, "
                      f"warm {times[way, 'warm'][-1]:.2f} s", flush=True)
    print(f"\nload: {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"{'way':<10} {'cold s':>8} {'ratio':>6} {'warm s':>8} {'ratio':>6}")
    for way in ways:
        row = []
        for home in ("cold", "warm"):
            med = statistics.median(times[way, home])
            ref = statistics.median(times[ways[0], home])
            row += [f"{med:8.2f}", f"{med / ref:6.2f}"]
        print(f"{way:<10} {' '.join(row)}")


if __name__ == "__main__":
    main()
