"""The few HTTP calls mm-mo makes to a vLLM server itself (lm-eval makes the completions calls).

Standard library only: a GET or a JSON POST with a timeout, answering ``(status, body)``, and
:class:`EngineHTTPError` for what did not answer at all.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

__all__ = ["EngineHTTPError", "free_port", "get", "get_json", "post_json"]


class EngineHTTPError(OSError):
    """The engine did not answer (refused, reset, timed out) or answered an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _call(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineHTTPError(f"{request.get_method()} {request.full_url}: "
                              f"{type(reason).__name__}: {reason}") from exc


def get(url: str, *, timeout: float) -> tuple[int, bytes]:
    """``GET url``: (status, body). Raises EngineHTTPError when nothing answers."""
    return _call(urllib.request.Request(url, method="GET"), timeout)


def get_json(url: str, *, timeout: float) -> Any:
    """``GET url`` that must answer 200 with JSON."""
    status, body = get(url, timeout=timeout)
    if status != 200:
        raise EngineHTTPError(f"GET {url}: HTTP {status}: {_excerpt(body)}", status)
    return json.loads(body)


def post_json(url: str, payload: dict[str, Any], *, timeout: float) -> Any:
    """``POST url`` with a JSON body; the JSON answer (None for an empty one).

    Raises:
        EngineHTTPError: no answer, or a status other than 200 (the message quotes the
            engine's error).
    """
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    status, body = _call(request, timeout)
    if status != 200:
        raise EngineHTTPError(f"POST {url}: HTTP {status}: {_excerpt(body)}", status)
    return json.loads(body) if body.strip() else None


def _excerpt(body: bytes) -> str:
    """The engine's error message (vLLM answers ``{"error": {"message": ...}}``), cut short."""
    text = body.decode(errors="replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data))
            text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    return " ".join(text.split())[:300]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` nobody listens on now (bound once and released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
