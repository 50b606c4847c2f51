"""The result store: every finished benchmark and merge info, by its one cache key.

One store per storage, ``<storage>/.outcomes/<key>.json``, shared by every study under that
storage and written through the same atomic, retried writes as the study store
(:class:`~mmmo.fsfolder.FsFolder`). It is the only result cache of the search: the inline,
thread, Prefect and Dask executors all look a result up here before computing it and write it
here as soon as it is known, so a run killed between a benchmark and its trial's record does
not evaluate that benchmark again, a resumed or repeated search re-uses every result it can,
and a second study over the same models re-uses the first's (keys cover the models'
fingerprints, the task's content and the evaluation settings).

Why here and not in Prefect's persisted task results: this store works the same for every
executor (Dask workers and inline runs need no Prefect API or result-storage block), needs no
server or database to resume, lives next to the studies (any machine that reads the bucket can
resume), and its writes are atomic and retried like the study's own (a long S3 outage lost
Prefect cache records; it does not lose these).
"""

from __future__ import annotations

from typing import Any

from mmmo.fsfolder import FsFolder

__all__ = ["OUTCOMES_DIR", "OutcomeStore"]

OUTCOMES_DIR = ".outcomes"


class OutcomeStore(FsFolder):
    """Finished outcomes (JSON) by cache key, under ``<storage>/.outcomes``."""

    kind = "result store"

    def __init__(self, storage: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.storage = storage.rstrip("/")
        super().__init__(f"{self.storage}/{OUTCOMES_DIR}", storage_options=storage_options)

    def resume_hint(self) -> str:
        """Resume the search once the store answers again."""
        return ("bring the store back, then resume the search (`mmmo resume STUDY --storage "
                f"{self.storage}`): every recorded result is kept")

    def get(self, key: str) -> Any | None:
        """The outcome stored under ``key``, or None."""
        try:
            return self.read_json(f"{key}.json")
        except FileNotFoundError:
            return None

    def put(self, key: str, value: Any) -> Any:
        """Store ``value`` under ``key`` (atomically); return it."""
        self.write_json(f"{key}.json", value)
        return value

    def keys(self) -> list[str]:
        """Every stored key, sorted."""
        return [name[: -len(".json")] for name in self.list("")]
