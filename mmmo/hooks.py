"""Test-only hooks, all in one place: crash points and fault injection. Unset, they do nothing.

Two environment variables drive them (tests set them; users leave them unset):

``MMMO_CRASH_AT`` -- kill the process (SIGKILL, no clean-up) at a crash point: ``N`` at the N-th
point passed, ``<name or shell pattern>`` at the first matching one (``merge:done:*``,
``write:bench-*:staged``), ``<pattern A> >> <pattern B>`` at the first point matching B passed
after one matching A. ``MMMO_CRASH_LOG=<file>`` appends ``<pid> <count> <point>`` for each
point passed; ``MMMO_CRASH_ONCE=<file>`` crashes only if that file does not exist yet and
creates it first (so a trial re-run elsewhere, e.g. on another Dask worker, passes the point).

``MMMO_FAULTS`` -- injected failures, e.g. ``raise=0.1,timeout=0.1,nan=0.1,oom=0.1,merge=0.2,
seed=0``: a benchmark attempt fails before it runs with an exception, a time-out or a NaN
score, or, for ``oom``, with ``torch.OutOfMemoryError`` from its first forward pass (the real
half-batch retry then runs); ``merge=p`` makes a recipe's merge raise, drawn once per recipe.
Each draw hashes ``(seed, recipe id, benchmark, attempt)``: the same attempt fails alike in
every process and run, a retry (the next attempt) draws again. Cache keys include the setting,
so injected outcomes never mix with real ones.

The engine tells the hooks which recipe and attempt it evaluates (:func:`evaluating`), so no
public signature carries them.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

__all__ = ["FAULTS_ENV", "FaultPlan", "crash_point", "current_attempt", "evaluating",
           "fault_plan",
           "faults_setting", "injected_fault", "merge_fault"]

FAULTS_ENV = "MMMO_FAULTS"

Fault = Literal["raise", "timeout", "nan", "oom"]

_PASSED = [0]
_ARMED = [False]


def crash_point(name: str) -> None:
    """Pass the crash point ``name`` (log it, and die here if this is the chosen one)."""
    at, log = os.environ.get("MMMO_CRASH_AT"), os.environ.get("MMMO_CRASH_LOG")
    if not at and not log:
        return
    _PASSED[0] += 1
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {_PASSED[0]} {name}\n")
    if at and ">>" in at:
        first, then = (part.strip() for part in at.split(">>", 1))
        if not _ARMED[0]:
            _ARMED[0] = fnmatch.fnmatchcase(name, first)
            return
        at = then
    if at and (_PASSED[0] == int(at) if at.isdigit() else fnmatch.fnmatchcase(name, at)):
        once = os.environ.get("MMMO_CRASH_ONCE")
        if once:
            try:
                with open(once, "x", encoding="utf-8") as fh:
                    fh.write(f"{os.getpid()} {name}\n")
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of each injected fault per evaluation attempt, and the draws' seed."""

    raise_: float = 0.0
    timeout: float = 0.0
    nan: float = 0.0
    oom: float = 0.0
    merge: float = 0.0
    seed: int = 0

    def draw(self, recipe_id: str, benchmark: str, attempt: int) -> Fault | None:
        """The fault of this attempt (None: the evaluation runs as usual)."""
        u = _uniform(f"{self.seed}|{recipe_id}|{benchmark}|{attempt}")
        for kind, p in (("raise", self.raise_), ("timeout", self.timeout), ("nan", self.nan),
                        ("oom", self.oom)):
            if u < p:
                return kind  # type: ignore[return-value]
            u -= p
        return None

    def merge_fails(self, recipe_id: str) -> bool:
        """Whether the merge of ``recipe_id`` is to raise."""
        return _uniform(f"{self.seed}|{recipe_id}|merge") < self.merge


def _uniform(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def faults_setting() -> str:
    """``MMMO_FAULTS`` as set ('' when unset): part of every cache key."""
    return os.environ.get(FAULTS_ENV, "").strip()


def fault_plan(text: str | None = None) -> FaultPlan | None:
    """The plan ``MMMO_FAULTS`` (or ``text``) describes; None when unset or empty.

    Raises:
        SpecError: (a ValueError) one line naming the bad entry.
    """
    from mmmo.errors import SpecError

    text = faults_setting() if text is None else text
    if not text.strip():
        return None
    values: dict[str, float | int] = {}
    for part in text.split(","):
        key, _, raw = part.strip().partition("=")
        try:
            if key not in ("raise", "timeout", "nan", "oom", "merge", "seed"):
                raise ValueError
            values["raise_" if key == "raise" else key] = int(raw) if key == "seed" \
                else float(raw)
        except ValueError:
            raise SpecError(FAULTS_ENV, "has a bad entry", value=part, fix="write e.g. "
                            "raise=0.1,timeout=0.1,nan=0.1,oom=0.1,seed=0") from None
    plan = FaultPlan(**values)  # type: ignore[arg-type]
    probabilities = (plan.raise_, plan.timeout, plan.nan, plan.oom)
    if min(*probabilities, plan.merge) < 0 or sum(probabilities) > 1 or plan.merge > 1:
        raise SpecError(FAULTS_ENV, "probabilities must be >= 0 and sum to <= 1", value=text,
                        fix="lower them (merge= is drawn on its own, <= 1)")
    return plan


_CURRENT: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "mmmo_evaluating", default=None)


@contextmanager
def evaluating(recipe_id: str, attempt: int) -> Iterator[None]:
    """Mark the benchmark evaluations inside the block as attempt ``attempt`` of ``recipe_id``
    (what injected faults are drawn from)."""
    token = _CURRENT.set((recipe_id, attempt))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_attempt() -> int:
    """Which try of the benchmark being evaluated this is (0: the first; 0 outside the engine)."""
    current = _CURRENT.get()
    return 0 if current is None else current[1]


def injected_fault(benchmark: str) -> Fault | None:
    """The fault ``MMMO_FAULTS`` injects into the current attempt of ``benchmark``, if any."""
    current = _CURRENT.get()
    if current is None or not faults_setting():
        return None
    plan = fault_plan()
    return plan.draw(current[0], benchmark, current[1]) if plan is not None else None


def merge_fault(recipe_id: str) -> str | None:
    """The message of the merge failure ``MMMO_FAULTS`` injects for ``recipe_id``, if any."""
    if not faults_setting():
        return None
    plan = fault_plan()
    if plan is not None and plan.merge_fails(recipe_id):
        return f"recipe {recipe_id}: merge failed (injected by {FAULTS_ENV})"
    return None
