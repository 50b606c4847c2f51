"""The project's exception hierarchy: callers catch these, not library internals."""

from __future__ import annotations


class MmmoError(Exception):
    """Base class of every error mm-mo raises on purpose."""


class SpecError(MmmoError, ValueError):
    """A search spec (or a CLI override of it) is invalid.

    ``str(error)`` is one line naming the field, the bad value and the fix.
    """

    def __init__(self, field: str, problem: str, *, value: object = None, fix: str = "",
                 source: str | None = None, has_value: bool = True) -> None:
        self.field = field
        self.problem = problem
        self.value = value
        self.fix = fix
        self.source = source
        self.has_value = has_value
        super().__init__(self._line())

    def _line(self) -> str:
        where = f"{self.source}: " if self.source else ""
        got = f" (got {_short(self.value)})" if self.has_value else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}{self.field}: {self.problem}{got}{fix}"


class HomologyError(MmmoError, ValueError):
    """Source models do not share the base model's architecture, tensors or vocabulary."""


class MergeError(MmmoError):
    """A merge could not be materialised (mergekit failed, or the weights are not finite)."""


class StudyError(MmmoError):
    """The study store is unusable (missing, locked by a live run, or inconsistent)."""


class LeaseHeldError(StudyError):
    """Another live run holds the study's lease."""


class StorageUnavailableError(MmmoError):
    """A remote study store did not answer for longer than its retries last.

    Not bad input (the CLI exits 1, not 2): what was recorded before is intact and the search
    can be resumed once the store answers again.
    """


class EvaluationError(MmmoError):
    """An evaluation failed; carries a typed failure record."""


def _short(value: object, limit: int = 80) -> str:
    """`repr` of a value on one line, cut to ``limit`` characters."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
