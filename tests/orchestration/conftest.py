"""Fixtures of the orchestration tests: small fixture-family specs, Prefect APIs, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def small_spec(folder: Path, *, storage: str, name: str = "small", limit: int = 16,
               n_init: int = 3, batch: int = 2, iterations: int = 1,
               strategy: str = "random", **changes: Any) -> Path:
    """Write a small search spec over the fixture family; returns its path."""
    data: dict[str, Any] = {
        "name": name,
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{s}"} for s in ("dbl", "rev", "srt")],
        "merge": {"method": "dare_ties", "normalize": False,
                  "parameters": {"weight": [0.0, 1.0], "density": [0.1, 1.0]}},
        "objectives": {"tasks": [{"task": f"fixture:tasks/{s}.yaml", "limit": limit}
                                 for s in ("dbl", "rev", "srt")]},
        "heldout": [{"task": "fixture:tasks/pair.yaml", "limit": limit}],
        "baselines": [],
        "optimizer": {"strategy": strategy, "n_init": n_init, "batch_size": batch,
                      "iterations": iterations, "seed": 0},
        "storage": storage,
        "compute": {"device": "cpu", "batch_size": 64},
        "evaluation": {"retries": 1, "retry_delay_seconds": 0},
        "confirm": {"max_documents": limit, "top_k": 1},
    }
    for key, value in changes.items():
        data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_env(api_url: str, home: Path) -> dict[str, str]:
    """Environment of an ``mmmo`` subprocess talking to the server at ``api_url``."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home),
           "PYTHONUNBUFFERED": "1"}
    return env


def mmmo(*args: str, env: dict[str, str], cwd: Path | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the ``mmmo`` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def make_spec() -> Any:
    """The :func:`small_spec` factory."""
    return small_spec


@pytest.fixture(scope="session")
def run_cli() -> Any:
    """The :func:`mmmo` subprocess runner."""
    return mmmo


@pytest.fixture(scope="session")
def cli_environ() -> Any:
    """The :func:`cli_env` factory."""
    return cli_env
