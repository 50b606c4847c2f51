"""The CLI's progress bar: trials (or, under multi-fidelity, documents) done, polled from the
study store while the flow runs."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

__all__ = ["Progress"]


class Progress:
    """A progress bar of trials done / budget, polling the study store.

    With multi-fidelity it counts documents: those scored so far (every trial, every level),
    out of what scoring each recipe of the budget on the whole subsample would take."""

    def __init__(self, spec: Any, console: Any) -> None:
        from mmmo.study import StudyStore

        self.console = console
        self.store = StudyStore(spec.storage, spec.study_name)
        self.budget = spec.optimizer.budget
        self.documents = _documents_budget(spec) if spec.optimizer.fidelity else None
        self.stop = threading.Event()

    def __enter__(self) -> Progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        what = "trials" if self.documents is None else "documents"
        self.bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"), console=self.console, transient=False)
        self.task = self.bar.add_task("", total=self.documents or self.budget)
        self.bar.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _count(self) -> tuple[int, str]:
        if self.documents is None:
            return len(self.store.list("trials")), ""
        trials = self.store.trials()
        done = sum(sum(t.documents.values()) for t in trials)
        return done, f"{len(trials)}/{self.budget} trials "

    def _poll(self) -> None:
        from mmmo.engine.activity import activity

        while not self.stop.wait(1.0 if self.documents is None else 3.0):
            try:
                n, trials = self._count()
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            self.bar.update(self.task, completed=n, description=trials + activity())

    def __exit__(self, *exc: object) -> None:
        """Stop polling; count the trials once more unless the run failed (the store may be
        why: its error must surface now, not be replaced by this count's own)."""
        self.stop.set()
        self.thread.join(timeout=3)
        try:
            if exc[0] is None:
                with contextlib.suppress(Exception):  # progress is best effort
                    n, trials = self._count()
                    self.bar.update(self.task, completed=n, description=trials)
        finally:
            self.bar.stop()


def _documents_budget(spec: Any) -> int | None:
    """Documents the budget's recipes would take on each objective's whole subsample."""
    from mmmo.evaluation.tasks import DocRange, task_sizes

    try:
        per_recipe = sum(DocRange(stop=t.limit).count(n) for t in spec.objectives.tasks
                         for n in task_sizes(t).values())
    except Exception:  # noqa: BLE001 - progress is best effort
        return None
    return per_recipe * spec.optimizer.budget
