"""mmmo.procs.spawn's sweep_shm: what a stopped group had mapped on /dev/shm is deleted, unless
another process still maps it."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from mmmo.procs import spawn

_MAPPER = """
import mmap, sys, time
fh = open(sys.argv[1], "w+b"); fh.truncate(4096)
m = mmap.mmap(fh.fileno(), 4096); m[:5] = b"hello"
print("mapped", flush=True)
time.sleep(600)
"""


def _start(path: Path, log: Path, *, sweep: bool):
    proc = spawn([sys.executable, "-c", _MAPPER, str(path)], name="mapper", log=log,
                 sweep_shm=sweep, grace=2)
    deadline = time.monotonic() + 30
    while "mapped" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.alive()
        time.sleep(0.05)
    return proc


def test_stopped_group_leaves_no_shared_memory(tmp_path) -> None:
    swept = Path(f"/dev/shm/mmmo-test-{uuid.uuid4().hex}")
    kept = Path(f"/dev/shm/mmmo-test-{uuid.uuid4().hex}")
    try:
        _start(swept, tmp_path / "a.log", sweep=True).stop()
        assert not swept.exists()
        _start(kept, tmp_path / "b.log", sweep=False).stop()
        assert kept.exists()  # not asked to sweep: left alone
        import mmap

        with kept.open("r+b") as fh, mmap.mmap(fh.fileno(), 4096):  # mapped by this process
            _start(kept, tmp_path / "c.log", sweep=True).stop()
            assert kept.exists()
    finally:
        swept.unlink(missing_ok=True)
        kept.unlink(missing_ok=True)
