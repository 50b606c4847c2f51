"""Session-wide test set-up: offline, project-local caches, real S3 on loopback (moto)."""

from __future__ import annotations

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
    """One real ``prefect server start`` on loopback for the whole session; its API URL."""
    from flows.local_server import start_local_server, stop_local_server

    try:
        proc, url = start_local_server(tmp_path_factory.mktemp("prefect-server"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        stop_local_server(proc)


@pytest.fixture(scope="session")
def prefect_harness(prefect_server: str, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[None]:
    """In-process flows talk to the session's server (and keep their home in a temp dir)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_HOME: home}):
        yield


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
