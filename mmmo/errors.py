"""The project's exception hierarchy: callers catch these, not library internals.

Every :class:`MmmoError` carries ``field`` (what is wrong: a spec field, an option, ``storage``,
``study``, an environment variable), ``problem``, optionally the bad ``value``, and ``fix``;
``str(error)`` renders them as one line::

    <source>: <field>: <problem> (got <value>); fix: <fix>

Its class says how the command line ends (:attr:`MmmoError.exit_code`): 2 for bad input
(refused before any work), 3 for a search that finished without an acceptable result (the study
is kept), 1 for a runtime failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_NO_PICK",
    "DestinationExistsError",
    "EvaluationError",
    "HomologyError",
    "LeaseHeldError",
    "MergeError",
    "MmmoError",
    "ModelUnavailableError",
    "NoCompleteTrialError",
    "NoFeasibleTrialError",
    "SpecError",
    "SpecWarning",
    "StorageUnavailableError",
    "StudyError",
]

EXIT_FAILURE = 1
"""A runtime failure: the message and the log's path (with the traceback)."""
EXIT_BAD_INPUT = 2
"""Bad input, refused before any work: one line, nothing written."""
EXIT_NO_PICK = 3
"""The search finished, but no trial meets the pick's constraints: the study is kept, the
nearest trials are named; relax the constraints and pick again (``mmmo pick``)."""

_UNSET: Any = object()


class MmmoError(Exception):
    """Base class of every error mm-mo raises on purpose.

    Args:
        field: What is wrong (a spec field such as ``merge.layer_groups``, ``storage``,
            ``--max-iterations``, ``MMMO_FAULTS``); empty for a message without one.
        problem: What is wrong with it.
        value: The bad value, shown as ``(got ...)``; leave it out for none.
        fix: What the user should do.
        source: The file the field comes from (a spec path), shown first.
        has_value: Force showing (or hiding) ``value`` (default: shown when given).

    ``MmmoError("one message")`` (a single argument) is a message without a field.
    """

    exit_code: ClassVar[int] = EXIT_FAILURE

    def __init__(self, field: str = "", problem: str = "", *, value: Any = _UNSET,
                 fix: str = "", source: str | None = None,
                 has_value: bool | None = None) -> None:
        if not problem:  # a bare message
            field, problem = "", field
        self.field = field
        self.problem = problem
        self.has_value = (value is not _UNSET) if has_value is None else has_value
        self.value = None if value is _UNSET else value
        self.fix = fix
        self.source = source
        super().__init__(self.line())

    def line(self) -> str:
        """The one line the user sees."""
        where = f"{self.source}: " if self.source else ""
        field = f"{self.field}: " if self.field else ""
        got = f" (got {_short(self.value)})" if self.has_value else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}{field}{self.problem}{got}{fix}"

    def __str__(self) -> str:
        return self.line()

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Ray, Dask)
        return (_rebuild, (type(self), self.__dict__.copy(), self.args))


def _rebuild(cls: type[MmmoError], state: dict[str, Any], args: tuple[Any, ...]) -> MmmoError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, *args)
    return error


class SpecError(MmmoError, ValueError):
    """A search spec (or a CLI option, or an environment variable) is invalid."""

    exit_code = EXIT_BAD_INPUT


class SpecWarning(MmmoError, UserWarning):
    """Valid, but almost surely a mistake (a pick constraint no trial can meet): shown as a
    ``warning:`` line before the run starts, never raised by mm-mo."""

    exit_code = 0


class HomologyError(MmmoError, ValueError):
    """Source models do not share the base model's architecture, tensors or vocabulary, or a
    model cannot be read (``unreadable``)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, field: str = "", problem: str = "", *, unreadable: bool = False,
                 **kwargs: Any) -> None:
        self.unreadable = unreadable
        super().__init__(field, problem, **kwargs)


class ModelUnavailableError(MmmoError, FileNotFoundError):
    """A model reference names no readable model (missing folder, unknown fixture model, a hub
    model that is not in the local cache offline)."""

    exit_code = EXIT_BAD_INPUT


class DestinationExistsError(MmmoError, FileExistsError):
    """An export's destination already holds a complete export (bad input: choose another)."""

    exit_code = EXIT_BAD_INPUT


class MergeError(MmmoError):
    """A merge could not be materialised (mergekit failed, or the weights are not finite)."""


class StudyError(MmmoError):
    """The study cannot be used as asked (missing, a bad name, created by another search).

    With ``field="study"`` the line reads ``study <problem>`` (``study 'demo' is held by ...``).
    """

    exit_code = EXIT_BAD_INPUT

    def line(self) -> str:
        if self.field != "study":
            return super().line()
        where = f"{self.source}: " if self.source else ""
        got = f" (got {_short(self.value)})" if self.has_value else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}study {self.problem}{got}{fix}"


class LeaseHeldError(StudyError):
    """Another live run holds the study's lease."""


class StorageUnavailableError(MmmoError):
    """A remote study store did not answer for longer than its retries last.

    Not bad input (exit 1): what was recorded before is intact and the search can be resumed
    once the store answers again.
    """


class EvaluationError(MmmoError):
    """An evaluation failed; carries its typed failure record (``EvalFailure`` as JSON).

    ``EvaluationError(record)``: ``failure`` and ``args[0]`` are the record (how the Prefect
    tasks hand it on), ``str()`` its one line.
    """

    def __init__(self, field: Any = "", problem: str = "", **kwargs: Any) -> None:
        self.failure: dict[str, Any] | None = None
        if isinstance(field, dict):
            self.failure = dict(field)
            field, problem = (f"evaluation of {self.failure.get('task', '?')}",
                              f"{self.failure.get('kind', 'exception')}: "
                              f"{self.failure.get('message', '')}")
        super().__init__(field, problem, **kwargs)
        if self.failure is not None:
            self.args = (self.failure,)


class NoCompleteTrialError(MmmoError):
    """No trial completed: there is nothing to pick from (exit 1; the failures are recorded)."""


class NoFeasibleTrialError(MmmoError):
    """Trials completed, but none meets the pick's constraints (exit 3; the study is kept).

    Attributes:
        nearest: The closest trials, best first: ``(label, values, violations)`` where
            ``label`` is the trial's number (or its row), ``values`` its objective values
            (natural scale) and ``violations`` the constraints it misses, as text.
        constraints: The constraints, as text.
    """

    exit_code = EXIT_NO_PICK

    def __init__(self, field: str = "", problem: str = "", *,
                 nearest: Sequence[tuple[Any, dict[str, float], list[str]]] = (),
                 constraints: Sequence[str] = (), **kwargs: Any) -> None:
        self.nearest = list(nearest)
        self.constraints = list(constraints)
        super().__init__(field, problem, **kwargs)


def _short(value: object, limit: int = 80) -> str:
    """`repr` of a value on one line, cut to ``limit`` characters."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
