"""A Prefect API server on loopback that cannot outlive the process that started it.

``mmmo run`` starts one for the run when no API is configured (instead of Prefect's temporary
server, which a killed run leaves behind, re-parented to init); tests and benchmarks start one
for their session. The server runs under :func:`mmmo.procs.spawn`: a watchdog kills its process
group as soon as the starting process is gone, SIGKILL included.

Two ways to run it (``kind``), both a single process:

- ``"api"`` (what ``mmmo run`` uses): uvicorn serving ``prefect.server.api.server:create_app``
  the way Prefect's own temporary server does (no UI, no background services: nothing a search
  needs), without the ``prefect`` CLI's start-up;
- ``"full"`` (default): ``prefect server start`` (UI, scheduler and the other services), what
  deployments, schedules and workers need.

``benchmarks/server_startup.py`` measures both against Prefect's temporary server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from mmmo.procs import Spawned, spawn

__all__ = ["LocalServer", "server_command", "start_local_server", "stop_local_server"]

ServerKind = Literal["api", "full"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, kind: ServerKind = "api") -> tuple[list[str], dict[str, str]]:
    """The command (and the environment it adds) that serves the API on ``port``."""
    if kind == "full":
        return ([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "WARNING", "--analytics-off"], {})
    import importlib.util

    spec = importlib.util.find_spec("prefect")  # its folder, without importing it
    app_dir = Path(spec.origin if spec and spec.origin else ".").parent.parent
    return ([sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            {"PREFECT_UI_ENABLED": "0", "PREFECT_SERVER_UI_ENABLED": "0",
             "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})


class LocalServer(tuple):  # noqa: SLOT001 - (process, url), unpackable as before
    """``(process, api_url)`` of a started server; ``.url``, ``.process`` and ``.stop()``."""

    started: float
    """``time.perf_counter()`` when it was started."""

    def __new__(cls, process: Spawned, url: str) -> LocalServer:
        server = super().__new__(cls, (process, url))
        server.started = time.perf_counter()
        return server

    @property
    def process(self) -> Spawned:
        """The watchdog-guarded server process."""
        return self[0]

    @property
    def url(self) -> str:
        """The API URL (``http://127.0.0.1:<port>/api``)."""
        return self[1]

    def stop(self, timeout: float = 20) -> None:
        """Stop the server's process group and wait for it."""
        stop_local_server(self.process, timeout=timeout)


def start_local_server(home: Path | None = None, *, timeout: float = 120,
                       log: Path | None = None, kind: ServerKind = "full",
                       env: Mapping[str, str] | None = None,
                       wait: bool = True) -> LocalServer:
    """Start a server on a free loopback port.

    Args:
        home: Its own ``PREFECT_HOME`` and SQLite database (a test's); None uses the current
            home and database (what Prefect's temporary server would use).
        timeout: Seconds to wait for ``/api/health``.
        log: Its output (default ``home/server.log``, or discarded without a home).
        kind: ``"full"`` (``prefect server start``: UI, scheduler and other services, what
            deployments and workers need) or ``"api"`` (the API only, as ``mmmo run`` uses).
        env: Base environment (default this process's).
        wait: Wait for ``/api/health`` (else call :func:`wait_healthy` later).

    Returns:
        ``(process, api_url)`` as a :class:`LocalServer`.

    Raises:
        RuntimeError: it did not answer within ``timeout`` seconds (it is stopped first).
    """
    port = _free_port()
    cmd, extra = server_command(port, kind)
    full_env = {**(os.environ if env is None else env), **extra,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    full_env.pop("PREFECT_API_URL", None)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        full_env["PREFECT_HOME"] = str(home)
        full_env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home}/prefect.db"
        log = log or home / "server.log"
    proc = spawn(cmd, name=f"prefect server :{port}", log=log, env=full_env, grace=5.0)
    server = LocalServer(proc, f"http://127.0.0.1:{port}/api")
    if wait:
        wait_healthy(server, timeout=timeout)
    return server


def wait_healthy(server: LocalServer, *, timeout: float = 120) -> None:
    """Block until the server answers ``/health``; stop it and raise RuntimeError if it does not
    within ``timeout`` seconds (or if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.process.alive():
            break
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    code = server.process.returncode()
    server.stop()
    where = f"; see {server.process.log}" if server.process.log else ""
    why = f"exited with code {code}" if code is not None else f"did not answer in {timeout:.0f} s"
    raise RuntimeError(f"the Prefect API server {why}{where}")


def stop_local_server(proc: Spawned | subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    """Stop a server from :func:`start_local_server` (SIGTERM, then SIGKILL after ``timeout``)."""
    if isinstance(proc, Spawned):
        proc.stop(timeout)
        return
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
