"""Run a command that must not outlive the process that started it (even under SIGKILL).

Usage (by :func:`mmmo.procs.spawn`, not by hand)::

    python _watchdog.py <parent pid> <grace seconds> [--sweep-shm] -- <command> [args...]

The command runs in a new session (its own process group, with every process it starts). This
watchdog polls its parent twice a second; once the parent is gone (its pid no longer alive, or
this process re-parented), it sends SIGTERM to the command's whole group, then SIGKILL after
``grace`` seconds. SIGTERM/SIGINT sent to the watchdog are forwarded to the group the same way.
The watchdog exits with the command's exit code.

With ``--sweep-shm``, the files under ``/dev/shm`` that the group's processes were seen to map
(every 5 s, and when it is stopped or the command exits) are deleted once the group is gone,
unless another process still maps them: a process killed with SIGKILL cannot remove its shared-memory
segments itself (vLLM's message queues are hundreds of MB each).

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


def _mapped_shm(pgid: int | None = None) -> set[str]:
    """``/dev/shm`` files mapped by the processes of group ``pgid`` (None: by any process)."""
    out: set[str] = set()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return out
    for entry in entries:
        try:
            if pgid is not None:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[2]) != pgid:
                        continue
            with open(f"/proc/{entry}/maps") as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                        out.add(parts[5].strip().removesuffix(" (deleted)"))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _sweep(paths: set[str], pgid: int) -> None:
    """Once group ``pgid`` is gone (5 s at most), delete ``paths`` that still exist and that no
    live process maps."""
    if not paths:
        return
    deadline = time.monotonic() + 5.0
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for path in paths - _mapped_shm():
        with contextlib.suppress(OSError):
            os.unlink(path)


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
    parent, grace, *rest = argv
    sweep = bool(rest) and rest[0] == "--sweep-shm"
    args = rest[1:] if sweep else rest
    sep, cmd = (args[0], args[1:]) if args else ("", [])
    if sep != "--" or not cmd:
        print("usage: _watchdog.py PARENT_PID GRACE [--sweep-shm] -- COMMAND...",
              file=sys.stderr)
        return 2
    parent_pid, grace_s = int(parent), float(grace)
    first_ppid = os.getppid()
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping = {"signal": False}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    segments: set[str] = set()  # what the group has mapped (looked at every 5 s)
    polls = 0
    while True:
        if sweep and polls % 10 == 0:
            segments |= _mapped_shm(proc.pid)
        polls += 1
        code = proc.poll()
        if code is not None:
            if sweep:
                segments |= _mapped_shm(proc.pid)
            with contextlib.suppress(ProcessLookupError):  # children it left behind go too
                os.killpg(proc.pid, signal.SIGKILL)
            if sweep:
                _sweep(segments, proc.pid)
            return code
        if stopping["signal"] or os.getppid() != first_ppid or not _alive(parent_pid):
            if sweep:
                segments |= _mapped_shm(proc.pid)
            code = _stop(proc, grace_s)
            if sweep:
                _sweep(segments, proc.pid)
            return code
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
