r"""The ``mmmo`` package of an earlier commit, for benchmarks that run old and new code side by side.

``tree(ref)`` extracts ``mmmo/`` of commit ``ref`` (``git archive``) once into
``.cache/baselines/<sha>/`` and returns that folder: put it first on ``sys.path`` (or
``PYTHONPATH``) of a fresh process and ``import mmmo`` imports the old code. One process
imports one tree: run each side in its own process.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "baselines"


def resolve(ref: str) -> str:
    r"""The full commit hash of ``ref`` in this repository."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"error: --baseline: {ref!r} is not a commit of {ROOT}; fix: give a "
                         "commit hash or branch name (git log --oneline)")
    return out.stdout.strip()


def tree(ref: str) -> Path:
    r"""A folder holding ``mmmo/`` as of commit ``ref`` (extracted on first use)."""
    sha = resolve(ref)
    dest = CACHE / sha
    if (dest / "mmmo" / "__init__.py").exists():
        return dest
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "mmmo"],
        capture_output=True,
        check=True,
    ).stdout
    tmp = CACHE / f"{sha}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def label(ref: str) -> str:
    r"""A short name of ``ref``'s commit (its first 7 hex digits)."""
    return resolve(ref)[:7]
