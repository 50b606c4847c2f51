"""The Prefect API of one ``mmmo run``: its own loopback server unless one is configured."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["drain_prefect", "run_api", "start_api"]


def start_api(log: Path | None = None) -> Any:
    """A loopback Prefect API for this run, unless one is configured (PREFECT_API_URL).

    Prefect would otherwise start a temporary server of its own, which a killed run leaves
    behind; this one runs under mm-mo's watchdog and goes with the run, SIGKILL included.
    Returns the started server (not yet healthy) or None.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from flows.local_server import start_local_server

    return start_local_server(wait=False, log=log, kind="api")


@contextlib.contextmanager
def run_api(server: Any) -> Iterator[None]:
    """Point Prefect (this process and its children) at ``server`` (healthy: see
    :func:`flows.local_server.wait_healthy`) for the block; drain Prefect's workers at its end."""
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    logging.getLogger("mmmo.cli").info("Prefect API %s answered %.1f s after its start",
                                       server.url, time.perf_counter() - server.started)
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            try:
                yield
            finally:
                drain_prefect()
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def drain_prefect(timeout: float = 10.0) -> None:
    """Send the logs and events Prefect still holds before its server goes away (else its
    workers retry against a closed port at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
