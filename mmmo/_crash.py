"""Test-only crash points for kill-anywhere tests: ``MMMO_CRASH_AT=N`` SIGKILLs the process.

A crash point marks a place where a crash must be survivable (between a merge and its
evaluation, around every study write, ...). With ``MMMO_CRASH_AT=N`` the process kills itself
(SIGKILL, no clean-up) at the N-th crash point it passes, with ``MMMO_CRASH_AT=<point>`` at the
first point of that name or shell pattern (e.g. ``write:trials/0001.json:staged``,
``trial:2:merged``, ``write:outcomes/*:staged``); with
``MMMO_CRASH_LOG=<file>`` it appends ``<pid> <count> <point>`` for each one passed. Unset (the
default), nothing happens.
See ``tests/reliability/test_kill_anywhere.py``.
"""

from __future__ import annotations

import fnmatch
import os
import signal

__all__ = ["crash_point"]

_PASSED = [0]


def crash_point(name: str) -> None:
    """Pass the crash point ``name`` (log it, and die here if this is the chosen one)."""
    at, log = os.environ.get("MMMO_CRASH_AT"), os.environ.get("MMMO_CRASH_LOG")
    if not at and not log:
        return
    _PASSED[0] += 1
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {_PASSED[0]} {name}\n")
    if at and (_PASSED[0] == int(at) if at.isdigit() else fnmatch.fnmatchcase(name, at)):
        os.kill(os.getpid(), signal.SIGKILL)
