"""Fixtures of the reliability tests: a tiny fixture-family spec and the CLI run in-process."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml


def _tiny_spec(storage: str, /, **changes: Any) -> dict[str, Any]:
    """A valid, tiny search over the fixture family (2 objectives, 4 documents each)."""
    data: dict[str, Any] = {
        "name": "tiny",
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{s}"} for s in ("dbl", "rev", "srt")],
        "merge": {"method": "dare_ties", "normalize": False},
        "objectives": {"tasks": [{"task": f"fixture:tasks/{s}.yaml", "limit": 4}
                                 for s in ("dbl", "rev")]},
        "heldout": [{"task": "fixture:tasks/pair.yaml", "limit": 4}],
        "baselines": [],
        "optimizer": {"strategy": "random", "n_init": 2, "batch_size": 1, "iterations": 0,
                      "seed": 0},
        "storage": storage,
        "compute": {"device": "cpu", "batch_size": 64},
        "evaluation": {"retries": 1, "retry_delay_seconds": 0},
        "confirm": {"max_documents": 4, "top_k": 1},
    }
    data.update(copy.deepcopy(changes))
    return data


def _write_spec(path: Path, data: Any) -> Path:
    """Write ``data`` as YAML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_spec() -> Callable[..., dict[str, Any]]:
    """The :func:`_tiny_spec` factory: ``tiny_spec(storage, **changes) -> dict``."""
    return _tiny_spec


@pytest.fixture(scope="session")
def write_spec() -> Callable[[Path, Any], Path]:
    """The :func:`_write_spec` helper: ``write_spec(path, data) -> path``."""
    return _write_spec


@dataclass
class CliResult:
    """Exit code and captured output of one in-process ``mmmo`` command."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture
def mmmo_cli(capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``mmmo ARGS`` in this process (the console-script entry point, ``flows.cli.main``)."""
    from flows import cli

    # what the CLI sets with os.environ.setdefault: restored after the test
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["mmmo", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
