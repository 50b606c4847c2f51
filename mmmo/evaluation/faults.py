"""Fault injection in the evaluation path, for reliability tests: ``MMMO_FAULTS``.

``MMMO_FAULTS="raise=0.1,timeout=0.1,nan=0.1,oom=0.1,seed=0"`` makes benchmark evaluations
fail: before they run with an exception, a time-out or a NaN score, or, for ``oom``, with
``torch.OutOfMemoryError`` from the first forward pass at the requested batch size (the usual
retry at half the batch size then runs as usual), with these probabilities; ``merge=p`` makes
the merge of a recipe raise (:class:`~mmmo.errors.MergeError`) with probability ``p``, drawn
once per recipe, so that every retry and resume of that recipe fails alike. Each draw is a
hash of ``(seed, recipe id, benchmark, attempt)``: the same attempt of the same benchmark of the
same recipe fails the same way in every process and run, and a retry (the next attempt) draws
again. Only :func:`~mmmo.evaluation.evaluate_benchmark` reads it (when its caller names the
recipe and the attempt); unset, nothing is injected. Benchmark cache keys include the setting,
so injected outcomes are never mixed with cached real ones.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["FAULTS_ENV", "FaultPlan", "fault_plan"]

FAULTS_ENV = "MMMO_FAULTS"

Fault = Literal["raise", "timeout", "nan", "oom"]


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
        digest = hashlib.sha256(f"{self.seed}|{recipe_id}|{benchmark}|{attempt}".encode())
        u = int.from_bytes(digest.digest()[:8], "big") / 2.0**64
        for kind, p in (("raise", self.raise_), ("timeout", self.timeout), ("nan", self.nan),
                        ("oom", self.oom)):
            if u < p:
                return kind  # type: ignore[return-value]
            u -= p
        return None

    def merge_fails(self, recipe_id: str) -> bool:
        """Whether the merge of ``recipe_id`` is to raise."""
        digest = hashlib.sha256(f"{self.seed}|{recipe_id}|merge".encode())
        return int.from_bytes(digest.digest()[:8], "big") / 2.0**64 < self.merge


def fault_plan(text: str | None = None) -> FaultPlan | None:
    """The plan ``MMMO_FAULTS`` (or ``text``) describes; None when unset or empty.

    Raises:
        SpecError: (a ValueError) one line naming the bad entry.
    """
    from mmmo.errors import SpecError

    text = os.environ.get(FAULTS_ENV, "") if text is None else text
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
