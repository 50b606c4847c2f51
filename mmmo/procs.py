"""Processes mm-mo starts (Prefect servers, vLLM engines, Dask workers) die with their parent.

:func:`spawn` runs a command under :mod:`mmmo._watchdog`: the command gets a session (process
group) of its own, and the watchdog, a child of this process, kills that whole group as soon
as this process is gone, however it went (a clean exit, an exception, SIGKILL). A clean exit
also stops every spawned process through :mod:`atexit`. Output goes to a log file (the run's
log), never to the console.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Spawned", "spawn", "stop_all"]

_WATCHDOG = Path(__file__).with_name("_watchdog.py")


class Spawned:
    """A command started by :func:`spawn`: its watchdog process and how to stop it."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, log: Path | None) -> None:
        self.proc, self.name, self.log = proc, name, log

    @property
    def pid(self) -> int:
        """The watchdog's pid (the command is its only child)."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the command (through its watchdog) is still running."""
        return self.proc.poll() is None

    def returncode(self) -> int | None:
        """The command's exit code once it exited, else None."""
        return self.proc.poll()

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the command's process group (SIGTERM, then SIGKILL); wait for it."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout + 10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        with _LOCK:
            _LIVE.discard(self)
        return self.proc.returncode

    def __repr__(self) -> str:
        return f"Spawned({self.name!r}, pid={self.pid}, alive={self.alive()})"


_LIVE: set[Spawned] = set()
_LOCK = threading.Lock()


def spawn(cmd: Sequence[str], *, name: str, log: Path | None = None,
          env: Mapping[str, str] | None = None, cwd: Path | None = None,
          grace: float = 10.0, sweep_shm: bool = False) -> Spawned:
    """Start ``cmd`` so that it cannot outlive this process.

    Args:
        cmd: The command and its arguments.
        name: What it is, for messages (e.g. ``"vllm engine 0"``).
        log: File that receives its stdout and stderr (appended); None discards them.
        env: Its environment (default: this process's).
        cwd: Its working directory.
        grace: Seconds between SIGTERM and SIGKILL when it is stopped.
        sweep_shm: Once the command's group is gone, delete the ``/dev/shm`` files it had
            mapped that no other process maps (what a SIGKILLed vLLM engine leaves).
    """
    out = subprocess.DEVNULL
    handle = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        out = handle
    try:
        proc = subprocess.Popen(
            [sys.executable, str(_WATCHDOG), str(os.getpid()), str(grace),
             *(["--sweep-shm"] if sweep_shm else []), "--", *cmd],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd)
    finally:
        if handle is not None:
            handle.close()
    spawned = Spawned(proc, name, log)
    with _LOCK:
        _LIVE.add(spawned)
    return spawned


def stop_all(timeout: float = 20.0) -> None:
    """Stop every process this process spawned and that still runs."""
    with _LOCK:
        live = list(_LIVE)
    for spawned in live:
        spawned.stop(timeout)


atexit.register(stop_all)
