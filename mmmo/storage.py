"""Storage URLs: parsed and checked before anything is written, for every fsspec protocol.

:func:`parse_storage` is pure (no I/O): it refuses a URL that cannot name a place for studies
(``s3://``, ``gs://``, ``http://``, ``memory://``, ``file://``, a local path such as
``s3:bucket`` that only looks like a URL, a chained ``a::b`` URL, a wrapper filesystem, an S3
bucket name S3 would refuse). :class:`~mmmo.study.StudyStore` parses its storage the same way,
so no code path can turn a malformed URL into a local folder named after it.

:func:`check_storage` then probes, in this order, each within seconds: the fsspec driver is
installed; the protocol can write (``http://`` and archives cannot); the host (of the URL, or
the S3 endpoint) resolves and accepts a TCP connection; the driver answers and, for buckets,
the bucket exists; a probe file can be written and removed. Each failure is one
:class:`~mmmo.errors.SpecError` line naming ``storage`` and the fix; nothing is left behind.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec

from mmmo.errors import SpecError

__all__ = ["PROBE_S3_CONFIG", "StorageURL", "check_storage", "parse_storage"]

#: botocore settings of the pre-flight probe of an S3 store: an unreachable endpoint fails in
#: seconds instead of minutes of retries.
PROBE_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 15,
                   "retries": {"max_attempts": 2, "mode": "standard"}}

#: Seconds for a DNS lookup, a TCP connection, and the driver's whole probe.
DNS_TIMEOUT, CONNECT_TIMEOUT, PROBE_TIMEOUT = 5.0, 5.0, 30.0

_LOCAL = frozenset({"file", "local"})
#: Protocols whose URL has no authority part: ``memory://studies``, ``hdfs:///studies``.
_PATH_ONLY = _LOCAL | {"memory", "hdfs", "arrow_hdfs"}
#: Protocols that cannot write (studies are written).
_READ_ONLY = frozenset({"http", "https", "github", "gist", "git", "zip", "tar", "libarchive",
                        "reference", "data", "dvc", "root", "wandb"})
#: Filesystems that wrap another one and need options, not a URL.
_WRAPPERS = frozenset({"cached", "simplecache", "filecache", "blockcache", "dir", "generic",
                       "async_wrapper", "asyncwrapper"})
#: Protocols whose authority is a network host, and their default ports.
_HOSTED = {"http": 80, "https": 443, "ftp": 21, "sftp": 22, "ssh": 22, "smb": 445,
           "webhdfs": 9870, "webdav": 443, "hdfs": 8020, "arrow_hdfs": 8020,
           "jupyter": 8888, "jlab": 8888, "dask": 8786}
_S3 = frozenset({"s3", "s3a"})
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_EXAMPLES = "a local folder, s3://bucket/prefix or another fsspec URL"


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL.

    Attributes:
        url: As given, with trailing slashes of its path removed (never of ``://``).
        protocol: ``file`` for local paths.
        authority: The bucket, container or ``host[:port]`` ('' for local and path-only).
        path: The part after the authority (for local storage: the whole path).
    """

    url: str
    protocol: str
    authority: str
    path: str

    @property
    def local(self) -> bool:
        """Whether this is a local folder."""
        return self.protocol in _LOCAL

    @property
    def local_path(self) -> Path:
        """The local folder (local storage only)."""
        return Path(self.path).expanduser()

    def join(self, name: str) -> str:
        """The URL of ``name`` under this storage."""
        return f"{self.url.rstrip('/')}/{name}"


def _bad(problem: str, url: str, fix: str, field: str) -> SpecError:
    return SpecError(field, problem, value=url, fix=fix)


def parse_storage(url: str, *, field: str = "storage") -> StorageURL:
    """Parse a storage URL without any I/O.

    Raises:
        SpecError: one line naming ``field``: the URL is malformed (see the module docstring).
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad("is empty", str(url), f"give {_EXAMPLES}", field)
    url = url.strip()
    if "::" in url:
        raise _bad("chained fsspec URLs ('a::b') cannot hold studies", url,
                   "give the target URL itself, e.g. s3://bucket/prefix", field)
    known = set(fsspec.available_protocols())
    if "://" not in url:
        head = url.split("/", 1)[0]
        if ":" in head and head.split(":", 1)[0].lower() in known:
            proto = head.split(":", 1)[0]
            raise _bad(f"looks like a URL ({proto}://) without '//' (it would be a local folder "
                       f"named '{head}')", url, f"write {proto}://<...>, or ./{url} for a "
                       "local folder", field)
        path = url.rstrip("/") or "/"
        return StorageURL(url=path, protocol="file", authority="", path=path)
    proto, rest = url.split("://", 1)
    proto = proto.lower()
    if proto not in known:
        raise _bad(f"unknown storage protocol '{proto}'", url, f"use {_EXAMPLES}", field)
    if proto in _WRAPPERS:
        raise _bad(f"{proto}:// wraps another filesystem and cannot hold studies by itself", url,
                   "give the target URL itself, e.g. s3://bucket/prefix", field)
    if proto in _PATH_ONLY:
        path = rest.rstrip("/") or ("/" if proto in _LOCAL and rest else "")
        if not path:
            example = "file:///srv/studies" if proto in _LOCAL else f"{proto}://studies"
            raise _bad(f"names no folder: nothing after {proto}://", url,
                       f"write {proto}://<folder>, e.g. {example}", field)
        return StorageURL(url=f"{proto}://{path}", protocol=proto, authority="", path=path)
    parts = urlsplit(url)
    what = "host" if proto in _HOSTED else "bucket"
    if not parts.netloc:
        raise _bad(f"names no {what}: nothing between {proto}:// and the path", url,
                   f"write {proto}://<{what}>/<prefix>", field)
    if proto in _HOSTED and not parts.hostname:
        raise _bad("names no host", url, f"write {proto}://<host>[:port]/<path>", field)
    if proto in _S3 and not _S3_BUCKET.match(parts.netloc):
        raise _bad(f"'{parts.netloc}' is not a valid S3 bucket name", url,
                   "bucket names are 3-63 lowercase letters, digits, '.' and '-'", field)
    path = rest[len(parts.netloc):].rstrip("/")
    return StorageURL(url=f"{proto}://{parts.netloc}{path}", protocol=proto,
                      authority=parts.netloc, path=path)


# --------------------------------------------------------------------------------- probing

T = TypeVar("T")


def _bounded(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` in a daemon thread; TimeoutError when it has not returned within ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="mmmo-storage-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_storage(storage: str, *, storage_options: dict[str, Any] | None = None,
                  field: str = "storage") -> None:
    """Fail fast, leaving nothing behind, when ``storage`` cannot hold studies.

    Raises:
        SpecError: one line naming ``field``, what is wrong and the fix.
    """
    parsed = parse_storage(storage, field=field)
    if parsed.local:
        _check_local(parsed.local_path, storage, field)
        return
    proto = parsed.protocol
    try:
        fsspec.get_filesystem_class(proto)
    except ImportError as exc:
        raise SpecError(field, f"needs a package that is not installed ({exc})".replace("\n", " "),
                        value=storage, fix=f"install the fsspec driver of {proto}://, or use "
                        "a local folder or s3://") from None
    if proto in _READ_ONLY:
        raise SpecError(field, f"{proto}:// is read-only: studies cannot be written there",
                        value=storage, fix="use a writable store: a local folder, s3://bucket/"
                        "prefix or another writable fsspec URL")
    options = dict(storage_options or {})
    for host, port, what in _hosts(parsed, options):
        _check_host(host, port, what, storage, field)
    _probe_driver(parsed, storage, options, field)


def _hosts(parsed: StorageURL, options: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    """(host, port, how to fix it) of what the driver will connect to, when known."""
    proto = parsed.protocol
    if proto in _HOSTED and parsed.authority:
        parts = urlsplit(parsed.url)
        return [(parts.hostname or "", parts.port or _HOSTED[proto], "the host in the URL")]
    if proto in _S3:
        endpoint = _s3_endpoint(options)
        parts = urlsplit(endpoint)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return [(parts.hostname, port, "the S3 endpoint (AWS_ENDPOINT_URL)")]
    if proto in ("gs", "gcs"):
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        parts = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        if emulator and parts.hostname:
            return [(parts.hostname, parts.port or 80, "STORAGE_EMULATOR_HOST")]
        return [("storage.googleapis.com", 443, "the network (Google Cloud Storage)")]
    return []


def _s3_endpoint(options: dict[str, Any]) -> str:
    """The endpoint botocore will use (explicit options, AWS_ENDPOINT_URL*, config, default)."""
    explicit = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
        "endpoint_url")
    try:
        import botocore.session

        session = botocore.session.get_session()
        region = (options.get("client_kwargs") or {}).get("region_name") \
            or session.get_config_variable("region") or "us-east-1"
        client = session.create_client("s3", endpoint_url=explicit, region_name=region,
                                       aws_access_key_id="probe", aws_secret_access_key="probe")
        return str(client.meta.endpoint_url)
    except Exception:  # noqa: BLE001 - then the driver's own probe reports it
        return explicit or ""


def _check_host(host: str, port: int | None, what: str, storage: str, field: str) -> None:
    try:
        infos = _bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                         DNS_TIMEOUT)
    except (socket.gaierror, UnicodeError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else "unknown host"
        raise SpecError(field, f"host '{host}' does not resolve ({why})", value=storage,
                        fix=f"check {what} and the network (DNS)") from None
    if port is None:
        return
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SpecError(field, f"cannot be reached: {host}:{port} {why.lower()}",
                        value=storage, fix=f"check {what}, that the server runs, and the "
                        "network") from None


def _probe_driver(parsed: StorageURL, storage: str, options: dict[str, Any],
                  field: str) -> None:
    """The driver answers, the bucket exists, and a probe file can be written and removed."""
    s3 = parsed.protocol in _S3
    if s3:
        options.setdefault("config_kwargs", PROBE_S3_CONFIG)

    def probe() -> None:
        fs, root = fsspec.core.url_to_fs(parsed.url, skip_instance_cache=True, **options)
        if s3:
            fs.retries = 1  # s3fs's own retry loop, on top of botocore's
            try:
                fs.info(parsed.authority)
            except FileNotFoundError:
                raise _MissingBucket(parsed.authority) from None
            except PermissionError:
                pass  # it answered; rights on the bucket itself are not needed under a prefix
        target = f"{root.rstrip('/')}/.mmmo-probe-{uuid.uuid4().hex[:12]}"
        fs.pipe_file(target, b"")
        fs.rm_file(target)

    try:
        _bounded(probe, PROBE_TIMEOUT)
    except _MissingBucket as exc:
        raise SpecError(field, f"bucket '{exc}' does not exist", value=storage,
                        fix="create the bucket first, or check AWS_ENDPOINT_URL") from None
    except PermissionError as exc:
        raise SpecError(field, f"cannot write there ({_first(exc)})", value=storage,
                        fix="use a store these credentials may write, or fix its "
                        "permissions") from None
    except NotImplementedError:
        raise SpecError(field, f"{parsed.protocol}:// cannot write files", value=storage,
                        fix="use a writable store: a local folder or s3://bucket/prefix") from None
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, no credentials, ...
        raise SpecError(field, f"cannot be reached ({type(exc).__name__}: {_first(exc)})",
                        value=storage, fix="check the endpoint (AWS_ENDPOINT_URL), the "
                        "network and the credentials") from None


class _MissingBucket(Exception):
    pass


def _first(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [""])[0])[:200]


def _check_local(path: Path, storage: str, field: str) -> None:
    """The folder (or its nearest existing parent) is a folder this process can write in."""
    probe_in = path if path.is_absolute() else Path.cwd() / path
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise SpecError(field, f"{probe_in} is a file, not a folder", value=storage,
                        fix="choose a folder for the studies")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mmmo-probe-", dir=probe_in)
    except OSError as exc:
        raise SpecError(field, f"cannot write in {probe_in} ({exc.strerror or exc})",
                        value=storage, fix="choose a writable folder, or fix its "
                        "permissions") from None
    os.close(fd)
    os.unlink(tmp)
