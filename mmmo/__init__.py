"""mm-mo: multi-objective Bayesian search over mergekit recipes (MM-MO, arXiv 2407.00487).

The core library is Prefect-free; ``flows/`` and ``tasks/`` are thin Prefect layers over it.
"""

from __future__ import annotations

from mmmo._env import apply_defaults

apply_defaults()

__version__ = "0.1.0"
