"""No process outlives ``mmmo run``, even killed with SIGKILL mid-search (a run that finishes
normally is checked in ``test_console.py``).

Without PREFECT_API_URL, ``mmmo run`` starts its own loopback Prefect API under mm-mo's watchdog
(Prefect's own temporary server, started otherwise, is left running re-parented to init when
its parent is killed). Every process of the run carries an environment marker
(:class:`tests.conftest.RunMark`): whatever still carries it after the run is a survivor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(spec: Path, cwd: Path, mark: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(mark.env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log = (cwd / "console.txt").open("wb")
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(spec)], cwd=cwd,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_search_leaves_no_process(tmp_path: Path, tiny_spec: Any, write_spec: Any,
                                              run_mark: Any) -> None:
    studies = tmp_path / "studies"
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(studies), optimizer={
        "strategy": "random", "n_init": 3, "batch_size": 1, "iterations": 3, "seed": 0}))
    proc = _start(spec, tmp_path, run_mark)
    trials = studies / "tiny" / "trials"
    deadline = time.monotonic() + 600
    while not (trials.is_dir() and any(trials.glob("*.json"))):  # mid-search: a trial is in
        assert proc.poll() is None, (tmp_path / "console.txt").read_text()
        assert time.monotonic() < deadline, "no trial recorded in 600 s"
        time.sleep(0.2)
    before = run_mark.processes()
    assert any("prefect.server.api.server:create_app" in cmd or "prefect server" in cmd
               for cmd in before.values()), before  # the run's own API server, marked
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(trials.glob("*.json"))) < 6  # killed before the end of the search
    left = run_mark.wait_gone(15.0)  # the watchdog polls twice a second, then SIGTERM/SIGKILL
    assert not left, f"survived the SIGKILL of mmmo run: {left}"
