"""Who holds a study, and until when: the lease a running search renews (:mod:`mmmo.study`)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

__all__ = ["Lease"]


@dataclass(frozen=True)
class Lease:
    """Who holds a study, and until when."""

    holder: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float

    def is_stale(self, now: float | None = None) -> bool:
        """Expired, or held by a process on this host that no longer exists."""
        now = time.time() if now is None else now
        if self.expires_at < now:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
