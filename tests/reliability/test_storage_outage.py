"""The S3 endpoint goes down in the middle of a search and comes back: the search finishes
(without Prefect, and as the Prefect flow).

Between the study store and moto's S3 server sits a TCP proxy that, when the search writes its
second trial record, drops that request and then refuses every connection: as a stopped and
restarted S3 server whose data survives. Without Prefect the endpoint comes back OUTAGE_S
seconds after the study store logged its first retry, so the outage always outlasts botocore's
and s3fs's own retries (which alone last 2 to 6 s here). The store retries with backoff
(:meth:`mmmo.fsfolder.FsFolder._retrying`), so the search (run without Prefect,
:func:`mmmo.engine.run_inline`) records every trial once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

OUTAGE_S = float(os.environ.get("MMMO_TEST_OUTAGE_S", "5"))


class FlakyEndpoint:
    """A TCP proxy to ``upstream`` that can play an outage.

    Once a client->server chunk contains ``trigger``, that connection is dropped, every open
    connection is closed and the listening socket is shut for ``seconds`` (connections are
    refused), then it listens again on the same port; with ``seconds=None`` it stays down until
    :meth:`restore`.
    """

    def __init__(self, upstream: tuple[str, int], trigger: bytes,
                 seconds: float | None) -> None:
        self.upstream, self.trigger, self.seconds = upstream, trigger, seconds
        self.port = 0
        self.outages = 0
        self.error: Exception | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        sock.listen(64)
        self._server = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed: an outage, or the end
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if request and self.trigger and self.trigger in chunk:
                    self.trigger = b""  # once
                    self._outage()
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def _outage(self) -> None:
        self.outages += 1
        self._shut(self._server)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.clear()

        if self.seconds is not None:
            seconds = self.seconds
            threading.Thread(target=lambda: (time.sleep(seconds), self.restore()),
                             daemon=True).start()

    def restore(self) -> None:
        """Listen again on the same port (end of the outage)."""
        for _ in range(50):  # the port may take a moment to be free again
            if self._stopped:
                return
            try:
                self._listen()
                self.error = None
                return
            except OSError as exc:
                self.error = exc
                time.sleep(0.1)

    def close(self) -> None:
        self._stopped = True
        self._shut(self._server)

    @staticmethod
    def _shut(server: socket.socket) -> None:
        """Stop listening now (a bare close() would not wake the thread blocked in accept())."""
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()


class _BackAfterFirstRetry(logging.Handler):
    """Ends the proxy's outage OUTAGE_S seconds after the study store logs its first retry."""

    def __init__(self, proxy: FlakyEndpoint) -> None:
        super().__init__(logging.WARNING)
        self.proxy, self.timer = proxy, None

    def emit(self, record: logging.LogRecord) -> None:
        if self.timer is None and "retrying" in record.getMessage():
            self.timer = threading.Timer(OUTAGE_S, self.proxy.restore)
            self.timer.daemon = True
            self.timer.start()


def test_search_survives_an_s3_outage(s3_endpoint: str, tiny_spec: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    import s3fs

    from mmmo.engine import run_inline
    from mmmo.fsfolder import FsFolder
    from mmmo.search import Search
    from mmmo.spec import parse_spec

    bucket = "mmmo-outage"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FlakyEndpoint((host, int(port)), b"PUT /mmmo-outage/studies/outage/trials/0001.json",
                          None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(FsFolder, "retry_seconds", 8 * OUTAGE_S)  # bounded, should it fail
    logging.getLogger("mmmo.study").addHandler(back := _BackAfterFirstRetry(proxy))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        spec = parse_spec(tiny_spec(f"s3://{bucket}/studies", name="outage",
                                    objectives={"tasks": [{"task": "fixture:tasks/dbl.yaml",
                                                           "limit": 4}]},
                                    optimizer={"strategy": "random", "n_init": 2,
                                               "iterations": 0}))
        search = Search.open(spec)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mmmo.study"):
            assert run_inline(search)
        seconds = time.monotonic() - started
        print(f"search with a {OUTAGE_S:g} s outage: {seconds:.1f} s")
        trials = search.store.trials()
    finally:
        logging.getLogger("mmmo.study").removeHandler(back)
        proxy.close()
        s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.error is None
    assert proxy.outages == 1  # the endpoint did go away, in the middle of the search
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and "trials/0001.json" in retries[0], retries
    assert [t.number for t in trials] == [0, 1]
    assert all(t.status == "complete" for t in trials)
    assert seconds > OUTAGE_S  # it waited the outage out


def test_flow_survives_an_s3_outage(prefect_harness: None, s3_endpoint: str, tiny_spec: Any,
                                    write_spec: Any, tmp_path: Path, mmmo_cli: Any,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same outage under the Prefect flow (``mmmo run``), hitting a write of the result
    store (``.outcomes``) first, then the study's writes around it."""
    import s3fs

    from mmmo.study import StudyStore

    bucket = "mmmo-outage-flow"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FlakyEndpoint((host, int(port)), f"PUT /{bucket}/studies/.outcomes/".encode(),
                          OUTAGE_S)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()
    storage = f"s3://{bucket}/studies"
    spec = write_spec(tmp_path / "outage.yaml", tiny_spec(
        storage, name="outage-flow", heldout=[],
        objectives={"tasks": [{"task": "fixture:tasks/dbl.yaml", "limit": 4}]},
        optimizer={"strategy": "random", "n_init": 2, "iterations": 0}))
    try:
        started = time.monotonic()
        run = mmmo_cli("run", str(spec), "--study", "outage-flow")
        seconds = time.monotonic() - started
        print(f"flow with a {OUTAGE_S:g} s outage: {seconds:.1f} s")
        store = StudyStore(storage, "outage-flow")
        trials = store.trials()
        final = store.read_json("final.json") if store.exists("final.json") else None
    finally:
        proxy.close()
        s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.error is None and proxy.outages == 1  # it went away, mid-search
    assert run.code == 0, (run.stdout[-2000:], run.stderr[-3000:])
    assert [t.number for t in trials] == [0, 1]
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    assert final is not None and final["pick"]["number"] in (0, 1)
    assert seconds > OUTAGE_S  # it waited the outage out


@pytest.mark.slow
def test_an_outage_past_the_retries_fails_in_one_line_and_resume_loses_nothing(
        prefect_harness: None, s3_endpoint: str, tiny_spec: Any, write_spec: Any,
        tmp_path: Path, mmmo_cli: Any) -> None:
    """An outage longer than the study store's retries (``MMMO_STORE_RETRY_SECONDS``, 300 s by
    default, 1 s here) ends ``mmmo run`` (the Prefect flow, in its own process) with exit 1
    and one line naming the store, what it was doing and the fix. The store stays down until
    that process has exited, so the run cannot give its lease back; once the store is back,
    ``mmmo resume`` takes the dead run's lease over and finishes the search: the trial recorded
    before the outage is kept as it was, none is recorded twice."""
    import s3fs
    from prefect.settings import get_current_settings

    from mmmo.study import StudyStore

    bucket, study = "mmmo-outage-long", "outage-long"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FlakyEndpoint((host, int(port)),
                          f"PUT /{bucket}/studies/{study}/trials/0001.json".encode(), None)
    storage = f"s3://{bucket}/studies"
    spec = write_spec(tmp_path / "outage.yaml", tiny_spec(
        storage, name=study, heldout=[],
        objectives={"tasks": [{"task": "fixture:tasks/dbl.yaml", "limit": 4}]},
        optimizer={"strategy": "random", "n_init": 2, "iterations": 0}))
    # os.environ already holds the console settings mmmo_cli sets for the in-process runs
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "MMMO_STORE_RETRY_SECONDS": "1",
           "PREFECT_API_URL": str(get_current_settings().api.url)}
    try:
        failed = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec),
                                 "--study", study], capture_output=True, text=True, env=env,
                                timeout=600)
        assert proxy.outages == 1
        proxy.restore()
        s3fs.S3FileSystem.clear_instance_cache()
        store = StudyStore(storage, study)
        before = {n: store.read_bytes(f"trials/{n}") for n in store.list("trials")}
        left = store.read_lease()
        resumed = mmmo_cli("resume", study, "--storage", storage)
        after = StudyStore(storage, study)
        trials = after.trials()
        kept = after.read_bytes("trials/0000.json")
        final = after.read_json("final.json") if after.exists("final.json") else None
        lease = after.read_lease()
    finally:
        proxy.close()
        s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.error is None
    assert failed.returncode == 1, (failed.stdout[-2000:], failed.stderr[-3000:])
    lines = [line for line in failed.stderr.strip().splitlines() if line.strip()]
    assert lines[-2].startswith("failed: study store " + storage + "/" + study), lines
    assert "did not answer" in lines[-2] and "trials/0001.json" in lines[-2], lines[-2]
    assert f"fix: bring the store back, then `mmmo resume {study} --storage {storage}`" \
        in lines[-2], lines[-2]
    assert lines[-1].strip().startswith("log: "), lines
    assert list(before) == ["0000.json"]  # trial 0 was recorded before the outage
    assert left is not None and left.pid != os.getpid() and left.is_stale()  # a dead run's
    assert resumed.code == 0, (resumed.stdout[-2000:], resumed.stderr[-3000:])
    assert [t.number for t in trials] == [0, 1]
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    assert kept == before["0000.json"]  # kept as it was, not evaluated again
    assert final is not None and final["pick"]["number"] in (0, 1)
    assert lease is None  # released by the resumed run
