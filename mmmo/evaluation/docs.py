"""Which documents of a task are scored: seeded subsamples and slices of one ranking.

Subsampling (:func:`select_docs`): ``limit`` documents out of ``n``, chosen by ranking every
index ``i`` by ``sha256(f"{seed}:{i}")`` and keeping the ``k`` smallest, returned sorted. The
choice depends only on ``(n, k, seed)``, so every trial (and every Python/numpy version) sees the
same documents, and a larger limit keeps every document of a smaller one. A fractional limit is
``round(fraction * n)`` (at least 1). A limit that covers every document evaluates them all.
:class:`DocRange` is a slice ``[start, stop)`` of that ranking: the search's subsample, a
fidelity level's extra documents, or the documents no search used (confirmation).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DocRange", "docs_hash", "sample_size", "select_docs"]


def sample_size(limit: int | float | None, n: int) -> int:
    """Documents a ``limit`` selects out of ``n``: a count, or ``round(fraction * n)``, >= 1."""
    if limit is None or n == 0:
        return n
    if isinstance(limit, float):
        return min(n, max(1, round(limit * n)))
    return min(n, max(0, int(limit)))


@lru_cache(maxsize=256)
def _ranked(n: int, seed: int) -> tuple[int, ...]:
    keys = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return tuple(keys)


def select_docs(n: int, limit: int | float | None, seed: int) -> list[int] | None:
    """The fixed, seeded subsample of ``n`` documents that ``limit`` selects.

    Args:
        n: Number of documents of the task.
        limit: A count >= 1, a fraction in ``(0, 1]``, or None for all documents.
        seed: The task's ``sample_seed``.

    Returns:
        Sorted document indices, or None when the limit covers every document.
    """
    k = sample_size(limit, n)
    if k >= n:
        return None
    return sorted(_ranked(n, seed)[:k])


class DocRange(BaseModel):
    """A slice ``[start, stop)`` of a task's seeded document ranking (see :func:`select_docs`).

    ``start`` and ``stop`` are limits like ``TaskSpec.limit`` (a count, or a fraction of the
    task's documents); ``start`` None is 0 and ``stop`` None is every document. The search's
    subsample of a task with ``limit: k`` is ``DocRange(stop=k)``; nested fidelity levels are
    consecutive slices of one ranking (so a lower level's documents are in every higher one),
    and the documents no search used are ``DocRange(start=k)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stop: Annotated[int, Field(ge=0)] | float | None = None
    start: Annotated[int, Field(ge=0)] | float | None = None
    share: float | None = Field(default=None, gt=0.0, le=1.0)
    """Keep only this fraction of ``[start, stop)`` (its first ranks; at least one)."""
    size: int | None = Field(default=None, ge=1)
    """Keep at most this many documents from ``start`` on."""

    def bounds(self, n: int) -> tuple[int, int]:
        """``(first, end)`` ranks this range selects out of ``n`` documents."""
        first = 0 if self.start is None else sample_size(self.start, n)
        end = max(first, n if self.stop is None else sample_size(self.stop, n))
        if self.share is not None and end > first:
            end = first + max(1, round(self.share * (end - first)))
        if self.size is not None:
            end = min(end, first + self.size)
        return first, end

    def count(self, n: int) -> int:
        """How many of ``n`` documents this range selects."""
        first, end = self.bounds(n)
        return end - first

    def indices(self, n: int, seed: int) -> list[int] | None:
        """The sorted document indices out of ``n`` (None when the range is every document)."""
        first, end = self.bounds(n)
        if first == 0 and end >= n:
            return None
        return sorted(_ranked(n, seed)[first:end])

    def key(self) -> list[Any]:
        """What a cache key records of the range (counts and fractions kept apart)."""
        parts = [[type(v).__name__, v] for v in (self.start, self.stop)]
        return parts + [self.share, self.size] if (self.share, self.size) != (None, None) \
            else parts


def docs_hash(indices: dict[str, list[int]] | None) -> str:
    """A short hash of per-task document indices (``"all"`` for every document)."""
    if indices is None:
        return "all"
    text = json.dumps(indices, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
