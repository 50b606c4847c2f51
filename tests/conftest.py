"""Session-wide test set-up: offline, project-local caches, real S3 on loopback (moto)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Offline and project-local before anything imports transformers / datasets / prefect.
os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_key] = "1"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on: bound once and closed again, so connections to
    it are refused until a process (a browser, a server) takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real ``prefect server start`` on loopback for the whole session (its own database,
    under mm-mo's watchdog: it dies with the test session, even a killed one); its API URL."""
    from flows.local_server import start_local_server

    try:
        server = start_local_server(tmp_path_factory.mktemp("prefect-server"), timeout=180)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_harness(prefect_server: str, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[None]:
    """In-process flows talk to the session's server (and keep their home in a temp dir)."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_HOME: home}), \
            prefect.context._temporary_global_settings_context(  # noqa: SLF001
                prefect.context.get_settings_context()):
        yield
        _drain_prefect()


def _drain_prefect() -> None:
    """Send what Prefect's log and event workers still hold before the server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


class RunMark:
    """An environment marker inherited by every process a test starts (and their children)."""

    def __init__(self) -> None:
        import uuid

        self.value = uuid.uuid4().hex
        self.env = {"MMMO_TEST_RUN_MARK": self.value}

    def processes(self) -> dict[int, str]:
        """Live (not zombie) processes carrying the mark: pid -> command line."""
        needle = f"MMMO_TEST_RUN_MARK={self.value}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found[int(entry.name)] = cmd.strip()
        return found

    def wait_gone(self, timeout: float) -> dict[int, str]:
        """Wait up to ``timeout`` s for every marked process to end; what is left."""
        import time

        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.25)
        return left


@pytest.fixture
def run_mark() -> Iterator[RunMark]:
    """A :class:`RunMark`; whatever still carries it at teardown is killed and fails the test."""
    import signal

    mark = RunMark()
    yield mark
    left = mark.wait_gone(10.0)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 (moto's server); credentials set in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server; returns ``s3://<bucket>``."""
    import uuid

    import s3fs

    name = f"mmmo-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(name)
    return f"s3://{name}"
