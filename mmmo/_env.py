"""Process-wide defaults: offline hub access and project-local caches.

Applied once, when :mod:`mmmo` is imported, before transformers / huggingface_hub /
datasets read their environment. Every value is a default (``setdefault``): a user who
has network access and wants downloads sets ``HF_HUB_OFFLINE=0`` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # lm-eval would fork a process pool for bootstrap stderrs: unsafe beside threads and CUDA.
    "DISABLE_MULTIPROC": "1",
    # Prefect's temporary server can take > 20 s to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def cache_dir() -> Path:
    """The root of mm-mo's caches: ``$MMMO_CACHE_DIR`` or ``~/.cache/mmmo``."""
    return Path(os.environ.get("MMMO_CACHE_DIR") or Path.home() / ".cache" / "mmmo")


def apply_defaults() -> None:
    """Set offline flags and point compiled-extension caches into mm-mo's cache."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
