"""Run a command that must not outlive the process that started it (even under SIGKILL).

Usage (by :func:`mmmo.procs.spawn`, not by hand)::

    python _watchdog.py <parent pid> <grace seconds> -- <command> [args...]

The command runs in a new session (its own process group, with every process it starts). This
watchdog polls its parent twice a second; once the parent is gone (its pid no longer alive, or
this process re-parented), it sends SIGTERM to the command's whole group, then SIGKILL after
``grace`` seconds. SIGTERM/SIGINT sent to the watchdog are forwarded to the group the same way.
The watchdog exits with the command's exit code.

Deliberately standalone (standard library only, not imported through :mod:`mmmo`): it starts in
milliseconds and imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the command's group, SIGKILL it after ``grace`` s; return the exit code."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # others of the group may linger
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def main(argv: list[str]) -> int:
    parent, grace, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: _watchdog.py PARENT_PID GRACE -- COMMAND...", file=sys.stderr)
        return 2
    parent_pid, grace_s = int(parent), float(grace)
    first_ppid = os.getppid()
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping = {"signal": False}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        code = proc.poll()
        if code is not None:
            with contextlib.suppress(ProcessLookupError):  # children it left behind go too
                os.killpg(proc.pid, signal.SIGKILL)
            return code
        if stopping["signal"] or os.getppid() != first_ppid or not _alive(parent_pid):
            return _stop(proc, grace_s)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
